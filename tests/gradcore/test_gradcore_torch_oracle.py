"""Chains against ``torch.optim`` (the oracle): same gradients, 20 steps, same parameters and optimizer state."""

from __future__ import annotations

import pytest
import torch

from fedsim.gradcore import (
    add_decayed_weights,
    apply_updates,
    chain,
    scale_by_adam,
    scale_by_learning_rate,
    trace,
)

STEPS = 20
ATOL = 1e-6  # fp32 over 20 steps: different but equivalent operation orders


def _params(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}


def _grad_sequence(params: dict[str, torch.Tensor], seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(p.shape, generator=g) for k, p in params.items()} for _ in range(STEPS)]


def _run_both(ours, torch_opt_cls, torch_kwargs, seed=0):
    """Return (our params, our state, torch params, torch optimizer) after STEPS identical gradients."""
    params = _params(seed)
    grads = _grad_sequence(params, seed + 1)
    torch_params = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = torch_opt_cls(list(torch_params.values()), **torch_kwargs)
    state = ours.init(params)
    for g in grads:
        updates, state = ours.update(g, state, params)
        params = apply_updates(params, updates)
        for k, p in torch_params.items():
            p.grad = g[k].clone()
        opt.step()
    return params, state, torch_params, opt


@pytest.mark.parametrize(
    ("momentum", "nesterov", "weight_decay"),
    [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, True, 0.01)],
)
def test_sgd_chain_matches_torch_sgd(momentum, nesterov, weight_decay):
    ours = chain(add_decayed_weights(weight_decay), trace(momentum, nesterov), scale_by_learning_rate(0.05))
    params, state, torch_params, opt = _run_both(
        ours,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay},
    )
    for k, p in torch_params.items():
        torch.testing.assert_close(params[k], p.detach(), atol=ATOL, rtol=0)
        if momentum:
            torch.testing.assert_close(
                state.inner[1].trace[k], opt.state[p]["momentum_buffer"], atol=ATOL, rtol=0
            )


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_chain_matches_torch_adamw(weight_decay):
    # torch.optim.AdamW == Adam when weight_decay=0; decoupled decay = add_decayed_weights after the moments.
    ours = chain(
        scale_by_adam(0.9, 0.999, 1e-8), add_decayed_weights(weight_decay), scale_by_learning_rate(1e-2)
    )
    params, state, torch_params, opt = _run_both(
        ours,
        torch.optim.AdamW,
        {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": weight_decay},
    )
    adam_state = state.inner[0]
    for k, p in torch_params.items():
        torch.testing.assert_close(params[k], p.detach(), atol=ATOL, rtol=0)
        torch.testing.assert_close(adam_state.mu[k], opt.state[p]["exp_avg"], atol=ATOL, rtol=0)
        torch.testing.assert_close(adam_state.nu[k], opt.state[p]["exp_avg_sq"], atol=ATOL, rtol=0)
        assert int(adam_state.count) == int(opt.state[p]["step"]) == STEPS


def test_adam_matches_torch_adam():
    ours = chain(scale_by_adam(0.8, 0.99, 1e-6), scale_by_learning_rate(3e-3))
    params, _, torch_params, _ = _run_both(
        ours, torch.optim.Adam, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6}
    )
    for k, p in torch_params.items():
        torch.testing.assert_close(params[k], p.detach(), atol=ATOL, rtol=0)
