"""Fira's limiter, AGVM group factors and LANTON layer rates: the spec's worked numbers, invariants, oracles.

Oracles named next to each check: hand-worked closed forms (worked by hand from each paper's update rule),
``torch.optim.Adam`` (Fira with an inactive limiter), ``torch.cosine_similarity`` / ``torch.linalg.matrix_norm``
(AGVM's variance, LANTON's dual norm), and the per-client loop for stacked cohorts.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clients.optimizers import build, make_chain
from fedsim.gradcore.base import apply_updates
from fedsim.gradcore.layerwise import (
    agvm_factors,
    agvm_groups,
    dual_norm,
    group_cosine_distance,
    noise_adaptive_factors,
    norm_growth_limit,
    orthogonalize,
    scale_by_group_factor,
    scale_by_lanton,
    split_grads,
)
from fedsim.gradcore.momentum import trace
from fedsim.gradcore.partition import param_roles
from fedsim.gradcore.scaling import scale_by_learning_rate

NAMES = ["fira_adam", "agvm_sgd", "lanton"]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))


# ----------------------------------------------------------------------------------------------------------- Fira


def test_fira_limiter_spec_numbers():
    # spec: norms [1, 2, 1.005, 0.5] -> [1, 1.0100000101, 1.005, 0.5]; hand-worked: 2 / (2 / (1 + 1e-8) / 1.01)
    gen = torch.Generator().manual_seed(0)
    tx = norm_growth_limit(1.01)
    direction = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    direction = direction / direction.norm()
    state = tx.init({"w": direction})
    got = []
    for norm in (1.0, 2.0, 1.005, 0.5):
        out, state = tx.update({"w": norm * direction}, state)
        got.append(out["w"].norm().item())
        torch.testing.assert_close(out["w"] / out["w"].norm(), direction)  # direction untouched
    assert got == pytest.approx([1.0, 1.0100000101, 1.005, 0.5], rel=1e-10, abs=0)


def test_fira_limiter_bounds_growth_and_keeps_zero_updates_zero():
    gen = torch.Generator().manual_seed(1)
    tx = norm_growth_limit(1.01)
    state = tx.init({"w": torch.zeros(5)})
    out, state = tx.update({"w": torch.zeros(5)}, state)  # first update zero: r = 0, no NaN
    assert torch.equal(out["w"], torch.zeros(5))
    out, state = tx.update({"w": torch.zeros(5)}, state)
    assert torch.equal(out["w"], torch.zeros(5))
    prev = None
    for scale in (1.0, 5.0, 50.0, 0.1, 3.0):
        out, state = tx.update({"w": scale * torch.randn(5, generator=gen)}, state)
        norm = out["w"].norm().item()
        assert math.isfinite(norm)
        if prev is not None:
            assert norm <= 1.01 * (prev + 1e-8) * (1 + 1e-6)
        prev = norm


def test_fira_adam_with_an_inactive_limiter_is_torch_adam():
    # oracle: torch.optim.Adam; gamma so large that lam == 1 on every step after the first
    gen = torch.Generator().manual_seed(2)
    start = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen)}
    grads = [{k: torch.randn(v.shape, generator=gen) for k, v in start.items()} for _ in range(6)]
    tx = make_chain("fira_adam", {"w": "output", "b": "vector"}, lr=0.01, gamma=1e12)
    params, state = dict(start), tx.init(start)
    ref = {k: nn.Parameter(v.clone()) for k, v in start.items()}
    opt = torch.optim.Adam(ref.values(), lr=0.01)
    for g in grads:
        u, state = tx.update(g, state, params)
        params = apply_updates(params, u)
        for k, p in ref.items():
            p.grad = g[k].clone()
        opt.step()
    for k in start:
        torch.testing.assert_close(params[k], ref[k].detach(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------- AGVM


def _pair_with_cosine(cos: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor(
        [cos, math.sqrt(1 - cos * cos)], dtype=torch.float64
    )


def test_agvm_factor_spec_numbers():
    # hand-worked: sqrt(0.200001 / 0.050001) = 1.999985; sqrt(clamp(0.200001 / 0.900001, 0.5)) = sqrt(0.5)
    phi = {0: torch.tensor(0.2, dtype=torch.float64), 1: torch.tensor(0.05, dtype=torch.float64)}
    assert agvm_factors(phi)[1].item() == pytest.approx(1.999985, abs=1e-6)
    assert agvm_factors(phi)[0].item() == 1.0
    phi[1] = torch.tensor(0.9, dtype=torch.float64)
    assert agvm_factors(phi)[1].item() == pytest.approx(0.707107, abs=1e-6)


def test_agvm_one_refresh_from_half_batches_moves_the_head_factor_to_1_03():
    # Phi_0 = 0.2, Phi_1 = 0.05 from constructed half-batch gradients -> s_1 = 0.97 + 0.03 * 1.999985 = 1.0300
    a0, b0 = _pair_with_cosine(0.8)
    a1, b1 = _pair_with_cosine(0.95)
    groups = {"body": 0, "head": 1}
    tx = scale_by_group_factor(scale_by_learning_rate(1.0), groups, start=0, every=1)
    state = tx.init({"body": a0, "head": a1})
    phi = group_cosine_distance({"body": a0, "head": a1}, {"body": b0, "head": b1}, groups)
    assert phi[0].item() == pytest.approx(0.2, abs=1e-12) and phi[1].item() == pytest.approx(0.05, abs=1e-12)
    out, state = tx.update(split_grads({"body": a0, "head": a1}, {"body": b0, "head": b1}), state)
    assert state.scale[1].item() == pytest.approx(1.0300, abs=1e-4)
    assert state.scale[1].item() == pytest.approx(0.97 + 0.03 * 1.999985, abs=1e-6)
    assert state.scale[0].item() == 1.0
    torch.testing.assert_close(
        out["head"], -state.scale[1] * (a1 + b1) / 2
    )  # step = -lr * s_1 * mean gradient
    torch.testing.assert_close(out["body"], -(a0 + b0) / 2)


def test_group_cosine_distance_matches_torch_cosine_on_concatenated_groups():
    gen = torch.Generator().manual_seed(3)
    shapes = {"a": (4, 3), "b": (4,), "c": (2, 4)}
    g_a = {k: torch.randn(3, *s, generator=gen) for k, s in shapes.items()}  # 3 clients
    g_b = {k: torch.randn(3, *s, generator=gen) for k, s in shapes.items()}
    groups = {"a": 0, "b": 0, "c": 1}
    phi = group_cosine_distance(g_a, g_b, groups, batch_dims=1)
    for k, names in ((0, ["a", "b"]), (1, ["c"])):
        for i in range(3):
            flat_a = torch.cat([g_a[n][i].reshape(-1) for n in names])
            flat_b = torch.cat([g_b[n][i].reshape(-1) for n in names])
            ref = 1 - torch.cosine_similarity(flat_a, flat_b, dim=0)
            torch.testing.assert_close(phi[k][i], ref)


def test_agvm_backbone_factor_is_exactly_one_and_its_step_is_plain_momentum_sgd():
    gen = torch.Generator().manual_seed(4)
    roles = {"0.weight": "matrix", "0.bias": "vector", "2.weight": "output", "2.bias": "vector"}
    groups = agvm_groups(roles)
    assert groups == {"0.weight": 0, "0.bias": 0, "2.weight": 1, "2.bias": 1}
    shapes = {"0.weight": (5, 4), "0.bias": (5,), "2.weight": (3, 5), "2.bias": (3,)}
    params = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    tx = make_chain("agvm_sgd", roles, lr=0.1, momentum=0.9, start=1, every=1)
    ref = trace(0.9)
    state, ref_state = tx.init(params), ref.init(params)
    for _ in range(12):
        g = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
        u, state = tx.update(g, state, params)
        r, ref_state = ref.update(g, ref_state)
        for k in ("0.weight", "0.bias"):
            assert torch.equal(u[k], -0.1 * r[k])
        assert state.scale[0].item() == 1.0
    assert state.scale[1].item() != 1.0  # the head's factor did move


def test_agvm_consecutive_samples_refresh_on_schedule():
    # refresh at 0-based steps t >= start with t % every == 0 (Sense-X/AGVM hook), from (g_{t-1}, g_t)
    gen = torch.Generator().manual_seed(5)
    groups = {"body": 0, "head": 1}
    tx = scale_by_group_factor(scale_by_learning_rate(1.0), groups, start=2, every=2)
    grads = [{"body": torch.randn(6, generator=gen), "head": torch.randn(4, generator=gen)} for _ in range(5)]
    state = tx.init(grads[0])
    s = 1.0
    for t, g in enumerate(grads):
        _, state = tx.update(g, state)
        if t in (2, 4):
            phi = group_cosine_distance(grads[t - 1], g, groups)
            s = s + 0.03 * (agvm_factors(phi)[1].item() - s)
        assert state.scale[1].item() == pytest.approx(s, rel=1e-6)
    assert s != 1.0


def test_agvm_groups_must_contain_the_backbone():
    with pytest.raises(ValueError, match="group 0"):
        scale_by_group_factor(scale_by_learning_rate(1.0), {"a": 1})


# --------------------------------------------------------------------------------------------------------- LANTON


def test_noise_adaptive_factors_are_scalars_and_smaller_for_noisier_layers():
    noise = {
        "w1": torch.tensor(4.0),
        "w2": torch.tensor(1.0),
        "w3": torch.tensor(9.0),
        "b": torch.tensor(0.5),
    }
    groups = {"w1": "spectral", "w2": "spectral", "w3": "sign", "b": "rms"}
    f = noise_adaptive_factors(noise, groups)
    assert all(v.shape == () for v in f.values())
    assert f["w1"].item() < f["w2"].item()  # 4x the noise -> half the rate
    assert f["w1"].item() == pytest.approx(0.5, rel=1e-9)
    assert f["w2"].item() == f["w3"].item() == f["b"].item() == 1.0  # quietest (or only) layer of its group


def test_lanton_gives_the_noisier_layer_the_smaller_scalar_factor():
    gen = torch.Generator().manual_seed(6)
    mean = {"quiet": torch.randn(6, 4, generator=gen), "noisy": torch.randn(6, 4, generator=gen)}
    kinds = {"quiet": "spectral", "noisy": "spectral"}
    tx = scale_by_lanton(kinds)
    state = tx.init(mean)
    for _ in range(30):
        g = {
            k: m + (0.05 if k == "quiet" else 2.0) * torch.randn(6, 4, generator=gen) for k, m in mean.items()
        }
        out, state = tx.update(g, state)
    assert all(h.shape == () for h in state.noise.values())
    f = noise_adaptive_factors(state.noise, kinds)
    assert f["noisy"].item() < f["quiet"].item() == 1.0
    for k in mean:  # the step is one scalar times the LMO direction of the momentum
        torch.testing.assert_close(out[k], f[k] * orthogonalize(state.momentum[k]))


def test_lmo_pieces_against_linear_algebra():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    # dual of the spectral norm = nuclear norm (oracle: torch.linalg.matrix_norm "nuc")
    torch.testing.assert_close(dual_norm(x, "spectral", batch_dims=1), torch.linalg.matrix_norm(x, "nuc"))
    torch.testing.assert_close(dual_norm(x, "sign", batch_dims=1), x.abs().sum(dim=(1, 2)))
    # Muon's quintic Newton-Schulz: singular values in about [0.7, 1.2], per client
    o = orthogonalize(x, batch_dims=1)
    sv = torch.linalg.svdvals(o)
    assert sv.min() > 0.6 and sv.max() < 1.25
    torch.testing.assert_close(o[1], orthogonalize(x[1]))


# ------------------------------------------------------------------------------------------- all three, registered


@pytest.mark.parametrize("name", NAMES)
def test_stacked_cohort_equals_each_client_alone(name):
    gen = torch.Generator().manual_seed(8)
    base = {k: v.detach() for k, v in mlp().named_parameters()}
    roles = param_roles(base)
    extra = {"agvm_sgd": {"start": 1, "every": 2}}.get(name, {})
    clients, steps = 3, 12
    starts = [
        {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(clients)
    ]
    grads = [
        [{k: torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(clients)]
        for _ in range(steps)
    ]
    looped = []
    for i in range(clients):
        tx = make_chain(name, roles, lr=0.01, **extra)
        p, s = dict(starts[i]), tx.init(starts[i])
        for t in range(steps):
            u, s = tx.update(grads[t][i], s, p)
            p = apply_updates(p, u)
        looped.append(p)
    tx = make_chain(name, roles, batch_dims=1, lr=0.01, **extra)
    stacked = {k: torch.stack([s[k] for s in starts]) for k in base}
    state = tx.init(stacked)
    for t in range(steps):
        u, state = tx.update(
            {k: torch.stack([grads[t][i][k] for i in range(clients)]) for k in base}, state, stacked
        )
        stacked = apply_updates(stacked, u)
    for i in range(clients):
        for k in base:
            torch.testing.assert_close(stacked[k][i], looped[i][k], rtol=1e-5, atol=1e-6)


def test_agvm_half_batch_mode_stacked_equals_each_client_alone():
    gen = torch.Generator().manual_seed(9)
    groups = {"body": 0, "head": 1}
    tx1 = scale_by_group_factor(trace(0.9), groups, start=0, every=1, consecutive=False, batch_dims=1)
    tx0 = scale_by_group_factor(trace(0.9), groups, start=0, every=1, consecutive=False)
    halves = [
        [
            {"body": torch.randn(3, 5, generator=gen), "head": torch.randn(3, 2, generator=gen)}
            for _ in range(2)
        ]
        for _ in range(4)
    ]
    s1 = tx1.init(halves[0][0])
    outs = []
    for g_a, g_b in halves:
        u, s1 = tx1.update(split_grads(g_a, g_b), s1)
        outs.append(u)
    for i in range(3):
        s0 = tx0.init({k: v[i] for k, v in halves[0][0].items()})
        for t, (g_a, g_b) in enumerate(halves):
            u, s0 = tx0.update(split_grads(*({k: v[i] for k, v in h.items()} for h in (g_a, g_b))), s0)
            for k in u:
                torch.testing.assert_close(outs[t][k][i], u[k])
        torch.testing.assert_close(s1.scale[i], s0.scale)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fira_adam", {"lr": 0.01}),
        ("agvm_sgd", {"lr": 0.1, "start": 1, "every": 1}),
        ("lanton", {"lr": 0.01}),
    ],
)
def test_each_optimizer_decreases_a_small_mlp_regression_loss(name, kwargs):
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(128, 6, generator=gen)
    y = torch.sin(x @ torch.randn(6, 3, generator=gen))
    model = mlp()
    opt = build(name, model.named_parameters(), **kwargs)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])
