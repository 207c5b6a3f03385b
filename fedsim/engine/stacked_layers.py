"""The forward pass of K clients' models at once, written with batched kernels instead of ``vmap``.

Why this module exists: ``vmap(functional_call(model))`` is exact for any model but pays functorch's wrapping
and the module re-parametrisation on every call, about half a millisecond a step, which is most of a small chunk's
step on a CPU. Models built as ``nn.Sequential`` from common layers have a direct stacked form: a linear layer is
one ``baddbmm`` over the clients' weights ``[K, out, in]``, a convolution one grouped convolution with the clients
as groups (what ``vmap``'s own batching rule for convolutions does), and layers without parameters act on the
clients' examples as one batch. :func:`stacked_forward` translates such a model, layer by layer, and returns None
for anything else (the caller then uses ``vmap``), so the result is always the model's own function.

Inputs are ``[K, B, *example_shape]``, outputs ``[K, B, *out_shape]``; parameters are the model's names mapped to
stacks ``[K, *shape]``.

With ``taps`` (a list) every linear layer also records ``(weight name, input [K, N, in], output [K, N, out])``:
the gradient of its weight is ``output.grad^T @ input`` per client, which a trainer of plain SGD can add to the
weights directly (``baddbmm_``) instead of having autograd materialise it first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.models.layers import Reshape

Tap = tuple[str, torch.Tensor, torch.Tensor]
Taps = list[Tap] | None
StackedForward = Callable[[Mapping[str, torch.Tensor], torch.Tensor, Taps], torch.Tensor]
Layer = Callable[[Mapping[str, torch.Tensor], torch.Tensor, Taps], torch.Tensor]

ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Identity,
)
"""Parameter-free layers that act on every element alone: applied to the stacked tensor as they are."""

PER_EXAMPLE = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
"""Parameter-free layers that act on each example alone: applied with the clients folded into the batch."""


def linear_weights(model: nn.Module) -> list[str]:
    """The names of the weights of ``model``'s ``nn.Linear`` layers (what ``taps`` records)."""
    return [f"{name}.weight" if name else "weight" for name, m in model.named_modules() if type(m) is nn.Linear]


def stacked_forward(model: nn.Module) -> StackedForward | None:
    """``(params, x, taps=None) -> model outputs`` for K stacked clients, or None when a layer has no stacked
    form here."""
    layers = _translate(model, "")
    if layers is None:
        return None

    def forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, taps: Taps = None) -> torch.Tensor:
        for layer in layers:
            x = layer(params, x, taps)
        return x

    return forward


def _translate(module: nn.Module, prefix: str) -> list[Layer] | None:
    if type(module) is nn.Sequential:
        out: list[Layer] = []
        for name, child in module.named_children():
            inner = _translate(child, f"{prefix}{name}.")
            if inner is None:
                return None
            out += inner
        return out
    one = _layer(module, prefix)
    return None if one is None else [one]


def _layer(m: nn.Module, prefix: str) -> Layer | None:
    """One module's stacked form, or None. Only exact classes are translated (a subclass may override forward)."""
    kind = type(m)
    if kind in ELEMENTWISE:
        return lambda params, x, taps: m(x)
    if kind in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout) and m.p == 0:
        return lambda params, x, taps: x
    if kind in PER_EXAMPLE:
        return lambda params, x, taps: _per_example(m, x)
    if kind is nn.Flatten:
        start, end = m.start_dim, m.end_dim
        return lambda params, x, taps: x.flatten(_shift(start), _shift(end))
    if kind is Reshape:
        shape = tuple(m.shape)
        return lambda params, x, taps: x.reshape(x.shape[0], x.shape[1], *shape)
    if kind is nn.Linear:
        return _linear(prefix, m.bias is not None)
    if kind in (nn.Conv1d, nn.Conv2d) and m.padding_mode == "zeros":
        return _conv(m, prefix)
    return None


def _shift(dim: int) -> int:
    """A per-example module's dimension (batch first) in the stacked tensor (clients first)."""
    return dim + 1 if dim >= 0 else dim


def _per_example(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    k, b = x.shape[0], x.shape[1]
    y = m(x.reshape(k * b, *x.shape[2:]))
    return y.reshape(k, b, *y.shape[1:])


def _linear(prefix: str, has_bias: bool) -> Layer:
    w_name, b_name = f"{prefix}weight", f"{prefix}bias"

    def linear(params: Mapping[str, torch.Tensor], x: torch.Tensor, taps: Taps) -> torch.Tensor:
        w = params[w_name]  # [K, out, in]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [K, B·..., in]
        if has_bias:
            y = torch.baddbmm(params[b_name].unsqueeze(1), flat, w.transpose(1, 2))
        else:
            y = torch.bmm(flat, w.transpose(1, 2))
        if taps is not None:
            if not y.requires_grad:  # nothing before it needs a gradient: its own output still does
                y.requires_grad_(True)
            taps.append((w_name, flat, y))
        return y.reshape(*x.shape[:-1], w.shape[1])

    return linear


def _conv(m: nn.Conv1d | nn.Conv2d, prefix: str) -> Layer:
    """K clients' convolutions as one convolution with ``K · groups`` groups over the clients' channels."""
    w_name, b_name = f"{prefix}weight", f"{prefix}bias"
    conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    stride, padding, dilation, groups = m.stride, m.padding, m.dilation, m.groups
    has_bias = m.bias is not None

    def forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, taps: Taps) -> torch.Tensor:
        w = params[w_name]  # [K, out, in/groups, *kernel]
        k, b = x.shape[0], x.shape[1]
        folded = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])  # [B, K·C, *spatial]
        bias = params[b_name].reshape(-1) if has_bias else None
        y = conv(folded, w.reshape(-1, *w.shape[2:]), bias, stride, padding, dilation, k * groups)
        return y.reshape(b, k, w.shape[1], *y.shape[2:]).transpose(0, 1)

    return forward
