"""Plain SGD's step on a stacked linear layer written straight into its weights: ``W += factor · dYᵀ·X``.

Why this module exists: with plain SGD a linear layer's step is its weight gradient scaled by the learning rate,
and that gradient is one batched product of the layer's output gradient ``dY`` and input ``X``. Letting autograd
materialise the gradient and then adding it costs three passes over the weight stack per step (write the
gradient, read it, read and write the weights); one ``baddbmm_`` into the weights costs one. On a CPU those
passes, not the arithmetic, are most of a step.

A batched GEMM that accumulates into its output is not always as accurate as a product followed by an addition:
with MKL, when the output's last dimension is narrow (≤ 10 here) the in-place form loses up to ~8 ulp per step.
So the weight stack is stored with its wider dimension last (``[K, out, in]``, or transposed when ``out > in``),
and :func:`fused_is_accurate` checks each shape once per process, on a seeded probe against float64, falling back
to product-then-add where the fused form is less accurate, and for a single client (torch then calls the
unbatched kernel, whose in-place form also lost accuracy on small shapes).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from fedsim.engine.stacks import broadcast_into

PROBE_CLIENTS = 64
"""Clients in the probe: enough elements that the worst error is a stable statistic even for a tiny layer."""

PROBE_ELEMENTS = 1 << 22
"""At most this many elements per probe tensor (fewer clients for a big layer, which has elements enough)."""

PROBE_TOLERANCE = 1.5
"""The fused form is used when its worst error on the probe is at most this many times the separate form's."""


def weight_stack(broadcast: torch.Tensor) -> torch.Tensor:
    """A fresh ``[K, out, in]`` stack of one client's linear weight broadcast to K, stored with its wider
    dimension last (contiguous, or a transposed view of a contiguous ``[K, in, out]``)."""
    k, out, inp = broadcast.shape
    make = dict(dtype=broadcast.dtype, device=broadcast.device)
    stack = torch.empty(k, inp, out, **make).transpose(1, 2) if out > inp else torch.empty(k, out, inp, **make)
    return broadcast_into(stack, broadcast[0])


def step(weight: torch.Tensor, inputs: torch.Tensor, out_grad: torch.Tensor, factor: float) -> None:
    """``weight += factor · out_gradᵀ·inputs`` per client, in place, in the stack's own memory order.

    ``weight`` ``[K, out, in]`` from :func:`weight_stack`; ``inputs`` ``[K, N, in]``; ``out_grad`` ``[K, N, out]``.
    """
    if weight.is_contiguous():
        target, left, right = weight, out_grad.transpose(1, 2), inputs
    else:
        target, left, right = weight.transpose(1, 2), inputs.transpose(1, 2), out_grad
    rows, inner, cols = target.shape[1], left.shape[2], target.shape[2]
    batched = target.shape[0] > 1  # one client: torch calls a matrix kernel, not the batched one probed
    if batched and fused_is_accurate(rows, inner, cols, target.dtype, target.device.type):
        target.baddbmm_(left, right, alpha=factor)
    else:
        target.add_(torch.bmm(left, right), alpha=factor)


@lru_cache(maxsize=256)
def fused_is_accurate(rows: int, inner: int, cols: int, dtype: torch.dtype, device_type: str) -> bool:
    """Whether ``C.baddbmm_(A, B, alpha)`` is as accurate as ``C.add_(A @ B, alpha)`` for ``[rows, inner] ·
    [inner, cols]`` on this machine's kernels: both against float64 on one seeded probe (64 clients, weights
    ~0.3, gradients ~1e-2, a learning rate of 0.05), the fused form within :data:`PROBE_TOLERANCE` times the
    separate form's worst error. Where the kernels are the same the two agree exactly (ratio 1); where the fused
    one accumulates in place its worst error is 2-17 times larger on 64 probe clients (measured over seeds)."""
    gen = torch.Generator().manual_seed(rows * 1_000_003 + inner * 1009 + cols)
    k = max(1, min(PROBE_CLIENTS, PROBE_ELEMENTS // max(1, rows * max(cols, inner))))  # a big layer: fewer
    c = 0.3 * torch.randn(k, rows, cols, generator=gen, dtype=torch.float64)
    a = torch.randn(k, rows, inner, generator=gen, dtype=torch.float64)
    b = 1e-2 * torch.randn(k, inner, cols, generator=gen, dtype=torch.float64)
    device = torch.device(device_type)
    c_, a_, b_ = (t.to(device=device, dtype=dtype) for t in (c, a, b))
    exact = c_.double().cpu() - 0.05 * torch.bmm(a_.double().cpu(), b_.double().cpu())
    fused = c_.clone().baddbmm_(a_, b_, alpha=-0.05)
    separate = c_.clone().add_(torch.bmm(a_, b_), alpha=-0.05)
    err_fused = float((fused.double().cpu() - exact).abs().max())
    err_separate = float((separate.double().cpu() - exact).abs().max())
    return err_fused <= PROBE_TOLERANCE * err_separate + torch.finfo(dtype).tiny
