"""Per-layer clipping, LAMB's trust ratio, Adam's "hat" eps, and the combinators, on numbers worked by hand."""

from __future__ import annotations

import pytest
import torch

from fedsim import gradcore
from fedsim.gradcore.compose import repeat, reset_every
from fedsim.gradcore.layers import clip_per_layer, scale_by_trust_ratio


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def step(tx, grads, params=None):
    params = params or {k: torch.zeros_like(v) for k, v in grads.items()}
    out, _ = tx.update(grads, tx.init(params), params)
    return out


def test_clip_per_layer_bounds_each_tensor_on_its_own():
    out = step(clip_per_layer(1.0), {"a": t(3, 4), "b": t(0.3, 0.4)})  # norms 5 and 0.5
    torch.testing.assert_close(out["a"], t(0.6, 0.8))
    torch.testing.assert_close(out["b"], t(0.3, 0.4))
    stacked = step(clip_per_layer(1.0, batch_dims=1), {"a": torch.stack([t(3, 4), t(0.3, 0.4)])})
    torch.testing.assert_close(stacked["a"], torch.stack([t(0.6, 0.8), t(0.3, 0.4)]))


def test_trust_ratio_is_param_norm_over_update_norm():
    out = step(scale_by_trust_ratio(), {"w": t(0, 2)}, {"w": t(3, 4)})  # 5 / 2 = 2.5
    torch.testing.assert_close(out["w"], t(0, 5))
    zero = step(scale_by_trust_ratio(), {"w": t(0, 2)}, {"w": t(0, 0)})  # ratio 1 where a norm is 0
    torch.testing.assert_close(zero["w"], t(0, 2))


def test_adam_hat_eps_placement():
    g = {"w": t(2.0)}
    # torch: m_hat = 2, v_hat = 4 -> 2 / (2 + 0.1) = 0.952381
    torch.testing.assert_close(step(gradcore.scale_by_adam(0.9, 0.999, 0.1), g)["w"], t(2 / 2.1))
    # hat: sqrt(1-b2)/(1-b1) * m / (sqrt(v) + eps), m = 0.2, v = 0.004 -> 0.0632456 / 0.1632456 = 0.387426
    hat = step(gradcore.scale_by_adam(0.9, 0.999, 0.1, eps_mode="hat"), g)["w"]
    torch.testing.assert_close(hat, t(0.001**0.5 * 2 / (0.001**0.5 * 2 + 0.1)))
    assert abs(float(hat) - 0.387426) < 1e-6
    with pytest.raises(ValueError, match="eps_mode"):
        gradcore.scale_by_adam(eps_mode="x")


def test_repeat_and_reset_every():
    torch.testing.assert_close(step(repeat(gradcore.scale(2.0), 3), {"w": t(1.0)})["w"], t(8.0))
    tx = reset_every(gradcore.trace(0.5), 2)
    params = {"w": t(0.0)}
    state, outs = tx.init(params), []
    for _ in range(4):
        u, state = tx.update({"w": t(1.0)}, state, params)
        outs.append(float(u["w"]))
    assert outs == [1.0, 1.5, 1.0, 1.5]  # momentum restarts before step 2


def test_masked_and_partition_route_by_role_or_name():
    from fedsim.gradcore.partition import masked, param_roles, partition

    params = {"l1.weight": torch.zeros(4, 3), "l1.bias": torch.zeros(4), "head.weight": torch.zeros(2, 4)}
    roles = param_roles(params)
    assert roles == {"l1.weight": "matrix", "l1.bias": "vector", "head.weight": "output"}
    assert param_roles({k: v.unsqueeze(0) for k, v in params.items()}, client_dims=1) == roles
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    last_only = step(masked(gradcore.scale(0.0), ["output"], roles), grads, params)
    assert float(last_only["head.weight"].abs().sum()) == 0.0
    assert torch.equal(last_only["l1.weight"], grads["l1.weight"]) and torch.equal(
        last_only["l1.bias"], grads["l1.bias"]
    )
    by_name = step(masked(gradcore.scale(3.0), ["l1.bias"]), grads, params)
    assert torch.equal(by_name["l1.bias"], 3 * grads["l1.bias"]) and torch.equal(
        by_name["head.weight"], grads["head.weight"]
    )
    routed = step(
        partition(
            {"matrix": gradcore.scale(2.0), "output": gradcore.scale(5.0), "vector": gradcore.identity()},
            roles,
        ),
        grads,
        params,
    )
    assert [float(routed[k].mean()) for k in params] == [2.0, 1.0, 5.0]
    assert list(routed) == list(params)
    with pytest.raises(KeyError, match="no transform for labels"):
        partition({"matrix": gradcore.identity()}, roles).init(params)
