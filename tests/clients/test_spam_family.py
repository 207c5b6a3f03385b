"""diffGrad, SPAM and Stable-SPAM follow ``pytorch_optimizer`` 4.1.0 (the oracle) step for step, stacked or not.

Problem: three clients, each with a two-layer model's parameters (weights and biases, so the oracle's 2-D mask path
and 1-D in-place path both run), on a noisy quadratic ``g = a·(p - c_k) + noise`` with gradient spikes injected at
chosen steps (and, for Stable-SPAM, one all-zero tensor gradient). The steps and small reset intervals are chosen so
that SPAM clips spikes (t >= 20), resets its moments and warms up again, and Stable-SPAM resets twice. Trajectories
must agree with the oracle to rtol 1e-5 / atol 1e-6 in float32.
"""

from __future__ import annotations

import io

import pytest
import pytorch_optimizer
import torch
from torch import nn

from clients.optimizers import build, make_chain
from fedsim import gradcore
from fedsim.gradcore.partition import param_roles
from fedsim.gradcore.spike import difference

CLIENTS = 3
RTOL, ATOL = 1e-5, 1e-6
# name -> (oracle class, kwargs for both, steps, spike steps, (step, client, tensor) with an all-zero gradient)
CASES = {
    "diffgrad": (pytorch_optimizer.DiffGrad, {"lr": 0.01}, 30, (12,), None),
    # clipping for t in 20..39 and 60..79; resets at 40 and 80, each followed by a 10-step warm-up
    "spam": (
        pytorch_optimizer.SPAM,
        {"lr": 0.01, "update_proj_gap": 40, "warmup_epoch": 10},
        90,
        (25, 45, 65),
        None,
    ),
    # resets at 15 and 30; the running-max clip bites on the spikes
    "stable_spam": (
        pytorch_optimizer.StableSPAM,
        {"lr": 0.01, "update_proj_gap": 15},
        40,
        (10, 22),
        (20, 1, "2.bias"),
    ),
}


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def make_problem(steps: int, spikes: tuple[int, ...], zero) -> tuple[dict, dict, list]:
    """Per-client starts ``[K, ...]``, targets, and per-step noise (with spikes) ``[K, ...]``."""
    gen = torch.Generator().manual_seed(0)
    models = [tiny_model(k) for k in range(CLIENTS)]
    start = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
        for n, _ in models[0].named_parameters()
    }
    target = {n: torch.randn(v.shape, generator=gen) for n, v in start.items()}
    noise = []
    for t in range(1, steps + 1):
        step = {n: 0.3 * torch.randn(v.shape, generator=gen) for n, v in start.items()}
        if t in spikes:
            for v in step.values():
                v[torch.rand(v.shape, generator=gen) < 0.3] *= 1000.0
        if zero is not None and t == zero[0]:
            step[zero[2]][zero[1]] = 0.0
        noise.append(step)
    return start, target, noise


def grad_of(
    name: str, p: torch.Tensor, target: dict, noise: dict, client: int | None, t: int, zero
) -> torch.Tensor:
    """The quadratic's gradient for one tensor (one client, or all stacked when ``client is None``)."""
    c = target[name] if client is None else target[name][client]
    n = noise[name] if client is None else noise[name][client]
    g = 0.5 * (p - c) + n
    if zero is not None and t == zero[0] and name == zero[2]:
        if client is None:
            g[zero[1]] = 0.0
        elif client == zero[1]:
            g = torch.zeros_like(g)
    return g


def run_torch(opt_factory, start, target, noise, client, zero, steps=None, opt=None, params=None):
    """Step a torch optimizer over one client's parameters; returns the parameters and the optimizer."""
    if params is None:
        params = {n: nn.Parameter(v[client].clone()) for n, v in start.items()}
    opt = opt or opt_factory(params)
    for t, step_noise in enumerate(noise[:steps], start=1):
        for n, p in params.items():
            p.grad = grad_of(n, p.detach(), target, step_noise, client, t, zero).clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_oracle_through_build_and_stacked_chain(name):
    oracle_cls, kwargs, steps, spikes, zero = CASES[name]
    start, target, noise = make_problem(steps, spikes, zero)

    # the stacked chain: all clients in one call
    tx = make_chain(name, param_roles(start, client_dims=1), batch_dims=1, **kwargs)
    params, state = dict(start), tx.init(start)
    for t, step_noise in enumerate(noise, start=1):
        grads = {n: grad_of(n, p, target, step_noise, None, t, zero) for n, p in params.items()}
        updates, state = tx.update(grads, state, params)
        params = gradcore.apply_updates(params, updates)

    for k in range(CLIENTS):
        expected, _ = run_torch(lambda ps: oracle_cls(ps.values(), **kwargs), start, target, noise, k, zero)
        ours, _ = run_torch(lambda ps: build(name, ps.items(), **kwargs), start, target, noise, k, zero)
        moved = sum((expected[n] - start[n][k]).abs().sum() for n in start)
        assert moved > 0.1  # the trajectory is not trivial
        for n in start:
            torch.testing.assert_close(ours[n].detach(), expected[n].detach(), rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(params[n][k], expected[n].detach(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("name", "off"),
    [("spam", {"threshold": 0}), ("spam", {"update_proj_gap": 10_000}), ("stable_spam", {"theta": 0.0})],
)
def test_the_special_behaviours_are_exercised(name, off):
    """Turning clipping / resets off changes the trajectory on the test problem, so the oracle test covers them."""
    _, kwargs, steps, spikes, zero = CASES[name]
    start, target, noise = make_problem(steps, spikes, zero)
    with_it, _ = run_torch(lambda ps: build(name, ps.items(), **kwargs), start, target, noise, 0, zero)
    without, _ = run_torch(
        lambda ps: build(name, ps.items(), **{**kwargs, **off}), start, target, noise, 0, zero
    )
    assert max((with_it[n] - without[n]).abs().max() for n in start) > 1e-3


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_round_trip_mid_trajectory_continues_identically(name):
    _, kwargs, steps, spikes, zero = CASES[name]
    start, target, noise = make_problem(steps, spikes, zero)
    half = steps // 2 + 3  # SPAM: inside the warm-up after the reset at 40

    def factory(ps):
        return build(name, ps.items(), **kwargs)

    straight, _ = run_torch(factory, start, target, noise, 0, zero)
    first, opt = run_torch(factory, start, target, noise, 0, zero, steps=half)
    buffer = io.BytesIO()
    torch.save({"params": {n: p.detach() for n, p in first.items()}, "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)  # our own checkpoint: NamedTuple states
    resumed = {n: nn.Parameter(v.clone()) for n, v in saved["params"].items()}
    fresh = factory(resumed)
    fresh.load_state_dict(saved["opt"])
    rest = [None] * half + noise[half:]  # keep step numbers aligned for grad_of's zero-gradient step
    for t in range(half + 1, steps + 1):
        for n, p in resumed.items():
            p.grad = grad_of(n, p.detach(), target, rest[t - 1], 0, t, zero).clone()
        fresh.step()
    for n in start:
        assert torch.equal(resumed[n], straight[n])


def test_difference_is_the_change_since_the_previous_step():
    """Hand-worked: inputs 1, 3, 2 give 1 (g_0 = 0), 2, -1."""
    tx = difference()
    state = tx.init({"x": torch.zeros(1)})
    outs = []
    for g in (1.0, 3.0, 2.0):
        out, state = tx.update({"x": torch.tensor([g])}, state)
        outs.append(out["x"].item())
    assert outs == [1.0, 2.0, -1.0]
