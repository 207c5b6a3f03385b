"""Leading client dimension: a stacked ``[K, *shape]`` cohort through a transform == a loop over the K clients.

The oracle is the same transform applied one client at a time (opacus' one-sample-at-a-time pattern).
"""

from __future__ import annotations

from typing import Any

import torch

from fedsim.gradcore import (
    chain,
    clip_by_global_norm,
    scale_by_adam,
    scale_by_learning_rate,
)

K, STEPS = 3, 3


def _cohort(seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Stacked params [K, ...] and STEPS stacked gradients, with client norms on both sides of the clip bounds."""
    g = torch.Generator().manual_seed(seed)
    params = {
        "w": torch.randn(K, 2, 3, generator=g),
        "b": torch.randn(K, 3, generator=g),
        "s": torch.randn(K, generator=g),
    }
    scales = torch.tensor([0.05, 1.0, 5.0])  # per-client magnitude: below and above max_norm
    grads = [
        {
            k: torch.randn(p.shape, generator=g) * scales.reshape((K,) + (1,) * (p.dim() - 1))
            for k, p in params.items()
        }
        for _ in range(STEPS)
    ]
    return params, grads


def _client(tree: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i] for k, v in tree.items()}


def test_stacked_equals_per_client_loop(make_transform):
    make = make_transform
    params, grads = _cohort(0)
    tx, single = make(1), make(0)
    stacked_state = tx.init(params)
    loop_states = [single.init(_client(params, i)) for i in range(K)]
    for g in grads:
        stacked_out, stacked_state = tx.update(g, stacked_state, params)
        for i in range(K):
            out_i, loop_states[i] = single.update(_client(g, i), loop_states[i], _client(params, i))
            for k in out_i:
                torch.testing.assert_close(stacked_out[k][i], out_i[k], rtol=1e-6, atol=1e-7)


def _stack_states(states: list[Any]) -> Any:
    """Stack K per-client states field by field (NamedTuples, tuples, dicts, tensors)."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(states)
    if isinstance(first, dict):
        return {k: _stack_states([s[k] for s in states]) for k in first}
    if hasattr(first, "_fields"):
        return type(first)(*(_stack_states([getattr(s, f) for s in states]) for f in first._fields))
    if isinstance(first, tuple):
        return tuple(_stack_states(list(parts)) for parts in zip(*states, strict=True))
    raise TypeError(type(first))


def test_stacked_persistent_states_with_different_step_counts():
    """Clients that took 1, 2 and 3 steps before (count [K]) continue exactly as they would alone."""
    tx = chain(scale_by_adam(0.9, 0.99, 1e-8), scale_by_learning_rate(lambda step: 0.1 / (1.0 + step)))
    params, grads = _cohort(1)
    states = []
    for i in range(K):
        p_i, state = _client(params, i), tx.init(_client(params, i))
        for g in grads[: i + 1]:
            _, state = tx.update(_client(g, i), state, p_i)
        states.append(state)
    stacked = _stack_states(states)
    assert stacked.inner[0].count.tolist() == [1, 2, 3]
    final_g = {k: -v for k, v in grads[0].items()}
    stacked_out, _ = tx.update(final_g, stacked, params)
    for i in range(K):
        out_i, _ = tx.update(_client(final_g, i), states[i], _client(params, i))
        for k in out_i:
            torch.testing.assert_close(stacked_out[k][i], out_i[k], rtol=1e-6, atol=1e-7)


def test_clip_batch_dims_zero_on_a_cohort_is_one_vector():
    """Without batch_dims the cohort is clipped as one vector: the documented difference, checked."""
    params, grads = _cohort(2)
    tx = clip_by_global_norm(1.0)
    out, _ = tx.update(grads[0], tx.init(params), params)
    total = torch.sqrt(sum(v.square().sum() for v in out.values()))
    torch.testing.assert_close(total, torch.tensor(1.0))
