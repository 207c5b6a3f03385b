"""``trailing_scale``: a transform that ends in a constant scale exposes ``(head, factor)``, and stepping ``head``
then multiplying by ``factor`` is the transform itself (the vectorised trainer folds the factor into its in-place
parameter update). Checked over every registered client optimizer that can be built with its defaults."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import clients.optimizers as optimizers
from clients.optimizers import model_roles
from fedsim import gradcore
from fedsim.errors import ConfigError


def _stacked_model(k: int = 3) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    torch.manual_seed(0)
    params = {n: p.detach().unsqueeze(0).repeat(k, *([1] * p.dim())) for n, p in model.named_parameters()}
    return params, model_roles(model)


def _buildable() -> list[str]:
    params, roles = _stacked_model()
    names = []
    for name in optimizers.names():
        try:
            optimizers.make_chain(name, roles, batch_dims=1)
        except (ConfigError, ValueError):
            continue  # needs arguments beyond its defaults (e.g. sgd8bit's momentum)
        names.append(name)
    return names


@pytest.mark.parametrize("name", _buildable())
def test_head_then_factor_is_the_transform(name: str) -> None:
    params, roles = _stacked_model()
    tx = optimizers.make_chain(name, roles, batch_dims=1)
    if tx.trailing_scale is None:
        pytest.skip(f"{name} does not end in a constant scale")
    head, factor = tx.trailing_scale
    full_state, head_state = tx.init(params), head.init(params)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
        full, full_state = tx.update(grads, full_state, params)
        part, head_state = head.update(grads, head_state, params)
        for n in params:
            assert torch.equal(full[n], part[n] * factor), (name, n)
        params = {n: p + full[n] for n, p in params.items()}
    again, _ = head.update(grads, full_state, params)  # the head steps the full transform's state too
    assert set(again) == set(params)


def test_the_common_optimizers_expose_their_learning_rate() -> None:
    _, roles = _stacked_model()
    for name in ("sgd", "adam", "adamw"):
        tx = optimizers.make_chain(name, roles, batch_dims=1, lr=0.25)
        assert tx.trailing_scale is not None and tx.trailing_scale[1] == -0.25, name


def test_a_scheduled_or_inner_scale_is_not_a_trailing_one() -> None:
    assert gradcore.scale_by_learning_rate(lambda count: 0.1).trailing_scale is None
    assert gradcore.chain(gradcore.scale(2.0), gradcore.trace(0.9)).trailing_scale is None
    assert gradcore.chain().trailing_scale is None
    head, factor = gradcore.chain(gradcore.trace(0.9), gradcore.scale(2.0), gradcore.scale(3.0)).trailing_scale
    assert factor == 3.0
    u = {"w": torch.ones(2)}
    out, _ = head.update(u, head.init(u), u)
    assert torch.equal(out["w"], torch.full((2,), 2.0))  # the inner scale stays in the head


def test_is_identity_marks_exactly_the_transforms_that_change_nothing() -> None:
    _, roles = _stacked_model()
    head = optimizers.make_chain("sgd", roles, batch_dims=1, lr=0.1).trailing_scale[0]
    assert gradcore.is_identity(head)  # plain SGD: its gradients are its steps, up to the learning rate
    for name, args in [("sgd", {"momentum": 0.9}), ("sgd", {"weight_decay": 0.1}), ("adam", {})]:
        head = optimizers.make_chain(name, roles, batch_dims=1, **args).trailing_scale[0]
        assert not gradcore.is_identity(head), (name, args)
    assert gradcore.is_identity(gradcore.identity())
    assert gradcore.is_identity(gradcore.chain(gradcore.identity(), gradcore.chain(gradcore.identity())))
    assert not gradcore.is_identity(gradcore.chain())
    assert not gradcore.is_identity(gradcore.scale(1.0))
