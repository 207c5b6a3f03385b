"""The contract every registered client optimizer keeps, checked for each name in ``clients.optimizers.names()``.

A new optimizer joins by registering: structure kept, deterministic, ``state_dict`` round-trip resumes the same
trajectory, a stacked cohort (``batch_dims=1``) steps exactly as its clients stepped one by one, and it
converges on a quadratic and on a small regression.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from clients.optimizers import build, make_chain, names
from fedsim import gradcore
from fedsim.gradcore.partition import param_roles

# Learning rates that make each optimizer converge on the contract problems in the step budget below (optimizers
# with normalised steps move by ~lr per element regardless of the gradient's size, so they need smaller ones).
LR = {"sgd": 0.2, "sgd8bit": 0.2, "agvm_sgd": 0.2}
DEFAULT_LR = 0.02
STEPS = 150


def lr_of(name: str) -> float:
    return LR.get(name, DEFAULT_LR)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def regression_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    w = torch.randn(6, 3, generator=g)
    return x, torch.tanh(x @ w)


def train(name: str, model: nn.Module, steps: int, *, opt=None, seed: int = 0) -> tuple[list[float], object]:
    x, y = regression_data(seed)
    opt = opt or build(name, model.named_parameters(), lr=lr_of(name))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, opt


@pytest.mark.parametrize("name", names())
def test_keeps_the_parameter_structure(name):
    model = tiny_model()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    tx = make_chain(name, param_roles(params), lr=lr_of(name))
    state = tx.init(params)
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    updates, _ = tx.update(grads, state, params)
    assert list(updates) == list(params)
    assert all(updates[k].shape == v.shape and updates[k].dtype == v.dtype for k, v in params.items())
    assert all(torch.isfinite(u).all() for u in updates.values())


@pytest.mark.parametrize("name", names())
def test_deterministic(name):
    a, _ = train(name, tiny_model(), 20)
    b, _ = train(name, tiny_model(), 20)
    assert a == b


@pytest.mark.parametrize("name", names())
def test_state_dict_round_trip_resumes_the_same_trajectory(name):
    straight = tiny_model()
    train(name, straight, 30)

    first = tiny_model()
    _, opt = train(name, first, 12)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    resumed = tiny_model(seed=99)  # other weights, overwritten by the checkpoint
    resumed.load_state_dict(saved["model"])
    opt2 = build(name, resumed.named_parameters(), lr=lr_of(name))
    opt2.load_state_dict(saved["opt"])
    train(name, resumed, 18, opt=opt2)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", names())
def test_a_stacked_cohort_steps_as_its_clients_one_by_one(name):
    clients, steps = 3, 25
    model = tiny_model()
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    roles = param_roles(base)
    gen = torch.Generator().manual_seed(5)
    starts = [
        {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(clients)
    ]
    grads = [
        [{k: torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(clients)]
        for _ in range(steps)
    ]

    looped = []
    for i in range(clients):
        tx = make_chain(name, roles, lr=lr_of(name))
        p, s = dict(starts[i]), tx.init(starts[i])
        for t in range(steps):
            u, s = tx.update(grads[t][i], s, p)
            p = gradcore.apply_updates(p, u)
        looped.append(p)

    tx = make_chain(name, roles, batch_dims=1, lr=lr_of(name))
    stacked = {k: torch.stack([s[k] for s in starts]) for k in base}
    state = tx.init(stacked)
    for t in range(steps):
        g = {k: torch.stack([grads[t][i][k] for i in range(clients)]) for k in base}
        u, state = tx.update(g, state, stacked)
        stacked = gradcore.apply_updates(stacked, u)
    for i in range(clients):
        for k in base:
            torch.testing.assert_close(stacked[k][i], looped[i][k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", names())
def test_converges_on_a_quadratic(name):
    gen = torch.Generator().manual_seed(3)
    target = {"w": torch.randn(8, 6, generator=gen), "b": torch.randn(8, generator=gen)}
    params = {k: nn.Parameter(torch.zeros_like(v)) for k, v in target.items()}
    opt = build(name, params, lr=lr_of(name))
    first = None
    for _ in range(STEPS * 2):
        opt.zero_grad()
        loss = sum(0.5 * (params[k] - target[k]).pow(2).sum() for k in target)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first, (name, first, loss.item())


@pytest.mark.parametrize("name", names())
def test_converges_on_a_small_regression(name):
    losses, _ = train(name, tiny_model(), STEPS)
    assert losses[-1] < 0.6 * losses[0], (name, losses[0], losses[-1])
