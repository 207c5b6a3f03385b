"""The gradient-core chains of the client optimizers step exactly as ``torch.optim`` does, stacked or not."""

from __future__ import annotations

import pytest
import torch
import torch.optim

from clients.optimizers import make_chain
from fedsim import gradcore

TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
CASES = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01}),
    ("adamw", {"lr": 0.02, "weight_decay": 0.3}),
]


def _torch_trajectory(name, args, start, grads):
    params = {k: torch.nn.Parameter(v.clone()) for k, v in start.items()}
    opt = TORCH[name](params.values(), **args)
    for g in grads:
        for k, p in params.items():
            p.grad = g[k].clone()
        opt.step()
    return {k: p.detach() for k, p in params.items()}


@pytest.mark.parametrize(("name", "args"), CASES)
def test_chain_matches_torch_optim_for_each_client_of_a_stack(name, args):
    gen = torch.Generator().manual_seed(0)
    clients, steps = 3, 6
    start = {"w": torch.randn(clients, 4, 5, generator=gen), "b": torch.randn(clients, 5, generator=gen)}
    grads = [{k: torch.randn(v.shape, generator=gen) for k, v in start.items()} for _ in range(steps)]

    tx = make_chain(name, {"w": "output", "b": "vector"}, **args)
    params, state = dict(start), tx.init(start)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = gradcore.apply_updates(params, updates)

    for i in range(clients):
        expected = _torch_trajectory(
            name, args, {k: v[i] for k, v in start.items()}, [{k: v[i] for k, v in g.items()} for g in grads]
        )
        for k in start:
            torch.testing.assert_close(params[k][i], expected[k], rtol=1e-5, atol=1e-6)


def test_build_gives_a_torch_optimizer_that_steps_like_torch_optim():
    from clients.optimizers import build

    gen = torch.Generator().manual_seed(1)
    ours = torch.nn.Linear(4, 3)
    ref = torch.nn.Linear(4, 3)
    ref.load_state_dict(ours.state_dict())
    opt = build("adamw", ours.named_parameters(), lr=0.01, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.1)
    assert isinstance(opt, torch.optim.Optimizer)
    for _ in range(5):
        x = torch.randn(8, 4, generator=gen)
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            model(x).pow(2).mean().backward()
            o.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_model_roles_name_embeddings_vectors_matrices_and_the_head():
    from torch import nn

    from clients.optimizers import model_roles

    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 5), nn.Linear(5, 3))
    assert model_roles(model) == {
        "0.weight": "embedding",
        "2.weight": "matrix",
        "2.bias": "vector",
        "3.weight": "output",
        "3.bias": "vector",
    }
