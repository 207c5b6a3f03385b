"""The stacked forward pass against ``vmap(functional_call(model))``: same outputs and same gradients for every
translated layer, on models from the registry and on a generated stack of layers; None where it cannot be exact."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, vmap

from fedsim.engine.stacked_layers import ELEMENTWISE, PER_EXAMPLE, stacked_forward
from fedsim.models import build_model
from fedsim.models.layers import Reshape

K, B = 3, 5


def _stacked_params(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: (p.detach().unsqueeze(0) + 0.1 * torch.randn(K, *p.shape, generator=g)).requires_grad_(True)
        for n, p in model.named_parameters()
    }


def _agree(model: nn.Module, example_shape: tuple[int, ...], seed: int = 0) -> None:
    forward = stacked_forward(model)
    assert forward is not None, model
    params = _stacked_params(model, seed)
    x = torch.randn(K, B, *example_shape, generator=torch.Generator().manual_seed(seed + 1))
    want = vmap(lambda p, xb: functional_call(model, p, (xb,)))(params, x)
    got = forward(params, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed + 2))
    g_want = torch.autograd.grad((want * weights).sum(), list(params.values()))
    g_got = torch.autograd.grad((got * weights).sum(), list(params.values()))
    for name, a, b in zip(params, g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("name", "args", "shape"),
    [
        ("mlp", {}, (64,)),
        ("mlp", {"hidden": [16, 8], "activation": "softplus"}, (3, 4, 5)),
        ("cnn", {}, (64,)),  # flat square input: Reshape + Conv2d + MaxPool2d
        ("cnn", {"channels": 4}, (40,)),  # a 1-D signal: Conv1d + MaxPool1d
        ("cnn", {"channels": 2}, (3, 8, 8)),
        ("simple_cnn", {}, (3, 8, 8)),
    ],
)
def test_registry_models_agree_with_vmap(name, args, shape):
    _agree(build_model(name, args, input_shape=shape, num_classes=7, seed=0), shape)


_ACTS = [a for a in ELEMENTWISE if a is not nn.Identity]


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    acts=st.lists(st.sampled_from(_ACTS), min_size=3, max_size=3),
    bias=st.lists(st.booleans(), min_size=3, max_size=3),
    conv=st.sampled_from(["none", "1d", "2d"]),
    pool=st.sampled_from([p for p in PER_EXAMPLE if p.__name__.endswith("2d")]),
    seed=st.integers(0, 1000),
)
def test_generated_stacks_of_layers_agree_with_vmap(widths, acts, bias, conv, pool, seed):
    layers: list[nn.Module] = []
    if conv == "2d":
        shape: tuple[int, ...] = (2, 6, 6)
        pooled = pool(2) if "Adaptive" not in pool.__name__ else pool((3, 3))
        layers += [nn.Conv2d(2, 3, 3, padding=1, stride=1, groups=1, bias=bias[0]), acts[0](), pooled]
        layers += [nn.Conv2d(3, 3, 2, groups=3), nn.Flatten()]
    elif conv == "1d":
        shape = (12,)
        layers += [Reshape((2, 6)), nn.Conv1d(2, 4, 3, padding=2, dilation=2, bias=bias[0]), acts[0]()]
        layers += [nn.Flatten(1, -1)]
    else:
        shape = (4, 3)
        layers += [nn.Flatten()]
    body = nn.Sequential(*layers)
    width = body(torch.zeros(1, *shape)).shape[1]
    head: list[nn.Module] = []
    for i, w in enumerate(widths):
        head += [nn.Linear(width, w, bias=bias[i % 3]), acts[i % 3](), nn.Dropout(0.0), nn.Identity()]
        width = w
    model = nn.Sequential(body, nn.Sequential(*head), nn.Linear(width, 2))
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    _agree(model, shape, seed)


class MyLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)),  # no stacked form written for it
        nn.Sequential(MyLinear(3, 3)),  # a subclass may change forward: not translated
        nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)),  # active dropout is random
        nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")),
    ],
)
def test_what_has_no_stacked_form_falls_back(model):
    assert stacked_forward(model) is None
