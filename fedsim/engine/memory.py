"""How many clients a worker may stack at once: a per-client memory estimate against the worker's budget.

The vectorised trainer holds, per stacked client, its parameters, gradients, the updated parameters, its
optimizer state and the activations of one mini-batch. ``client_footprint_bytes`` estimates that from the model
(activations measured with forward hooks on a one-example probe), ``chunk_size`` turns a budget into a client
count, and ``memory_budget_bytes`` resolves ``engine.memory_budget_mb``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from fedsim.gradcore import GradientTransformation

CPU_AUTO_BUDGET = 64 << 20
"""``auto`` on a CPU: 64 MiB (or a quarter of the available memory if that is less). On a CPU, stacks that stay
near the caches train fastest: ``bench/chunk_size.py`` (see docs/performance.md) times budgets from 8 MiB to
unlimited; small budgets pay Python overhead per step, large ones pay memory bandwidth and page faults."""
CUDA_AUTO_FRACTION = 0.8
"""``auto`` on a GPU: this share of the device's memory times the worker's GPU share (``engine.gpus_per_worker``)."""


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, (tuple, list)):
        for v in tree:
            yield from _tensors(v)


def optimizer_slots(tx: GradientTransformation, params: Mapping[str, torch.Tensor]) -> float:
    """Parameter-sized tensors in the optimizer's state (0 for SGD, 1 with momentum, 2 for Adam, ~0.25 for 8-bit
    Adam), measured by initialising the state for ``params`` (with the layout the chain was built for)."""
    state = tx.init(dict(params))
    state_bytes = sum(t.numel() * t.element_size() for t in _tensors(state))
    param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    return state_bytes / max(1, param_bytes)


def activation_bytes_per_example(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Bytes of every module's output for one example (what backward keeps), measured on a probe forward."""
    total = 0

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        total += sum(t.numel() * t.element_size() for t in _tensors(output))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return total


def client_footprint_bytes(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, ...],
    *,
    optimizer_slots: float,
    per_example_grads: bool = False,
) -> int:
    """Estimated bytes one stacked client costs the vectorised trainer.

    Parameters × (weights, gradients, updated weights, the update, the weighted delta at the end, and the
    optimizer's slots), plus activations and their gradients for one mini-batch, plus the batch itself. With
    ``per_example_grads`` (DP-SGD) also a gradient per example of a Poisson batch, counted as 2·B (its size
    varies around B; padded to the largest in the chunk).
    """
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    act = activation_bytes_per_example(model, input_shape)
    example = math.prod(input_shape) * 4 + 8
    batch = 2 * batch_size if per_example_grads else batch_size
    extra = batch * param_bytes if per_example_grads else 0
    return int(param_bytes * (5 + optimizer_slots)) + batch * (2 * act + example) + extra


def chunk_size(per_client_bytes: int, budget_bytes: int | None) -> int:
    """How many clients fit ``budget_bytes`` (at least one; unbounded when there is no budget)."""
    if budget_bytes is None:
        return 1 << 62
    return max(1, budget_bytes // max(1, per_client_bytes))


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def memory_budget_bytes(setting: float | str, device: torch.device, gpus_per_worker: float = 0.0) -> int:
    """``engine.memory_budget_mb`` in bytes for a worker training on ``device``.

    A number is MiB. ``auto``: on a GPU, ``CUDA_AUTO_FRACTION`` of its memory times the worker's share of it
    (so workers sharing a GPU split it); on a CPU, ``CPU_AUTO_BUDGET`` (or a quarter of the available memory if less).
    """
    if setting != "auto":
        return int(float(setting) * 2**20)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        share = gpus_per_worker if 0 < gpus_per_worker < 1 else 1.0
        return int(CUDA_AUTO_FRACTION * total * share)
    return int(min(CPU_AUTO_BUDGET, _available_ram() // 4))
