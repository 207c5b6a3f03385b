"""Vectorised cohort training: a worker's clients trained together with ``torch.func``.

Clients are bucketed by their number of local steps; each bucket is cut into chunks that fit the worker's
memory budget, and a chunk's parameters are stacked ``[K, ...]``. Each step, one gather pulls every client's
mini-batch out of the pooled training tensors (``[K, B, ...]``, padded and masked where a client's last batch is
short), one vmapped forward and one autograd backward give every client's gradient, and the client optimizer — a
gradient-core chain equal to the ``torch.optim`` one (``clients.optimizers.chains``) — steps the whole stack at
once. Shuffling uses the same per-client generator draws as the sequential path, so the two agree to float
tolerance.

Supported: models without buffers (no BatchNorm) and without active dropout; every registered client optimizer
(each is a chain that accepts a leading client dimension). ``vectorizable`` says whether a model and optimizer qualify, and if not, why.

References:
    Paszke et al., "PyTorch: An Imperative Style, High-Performance Deep Learning Library", NeurIPS 2019
    (``torch.func`` is the functorch API); the per-worker in-process cohort follows pfl-research (Granqvist et
    al., "pfl-research: simulation framework for accelerating research in Private Federated Learning",
    arXiv 2404.06430, 2024).
"""

from __future__ import annotations

import ctypes
import math
import platform
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from clients.optimizers import make_chain, model_roles
from fedsim.data import FederatedData
from fedsim.engine import direct_sgd
from fedsim.engine.accumulate import CohortAccumulator
from fedsim.engine.memory import chunk_size, client_footprint_bytes, optimizer_slots
from fedsim.engine.stacked_layers import linear_weights, stacked_forward
from fedsim.engine.stacks import broadcast_into
from fedsim.gradcore import GradientTransformation, is_identity
from fedsim.protocol import ClientTask, TrainConfig, WorkerResult

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20  # the largest mmap threshold glibc accepts on a 64-bit machine
_heap_kept = 0  # the trim threshold this process last set (0: not set)


def keep_freed_memory(nbytes: int) -> bool:
    """Let this process's C heap keep up to ``nbytes`` of freed memory instead of returning it (glibc only).

    Every training step allocates a chunk's gradients, updates and activations anew (megabytes each: a tensor
    of the stack) and frees them at the step's end. By default glibc serves blocks that large with fresh pages
    (``mmap``, or the top of the heap, which it trims again once more than twice its threshold is free), so the
    next step faults every page in again, zero-filled by the kernel: ~130 000 page faults in one worker's
    500-client round of the CPU benchmark, a third of its time. With large blocks taken from the heap and the
    heap trimmed only past ``nbytes``, a step reuses the previous step's (cache-warm) memory. Results are
    unchanged; the process keeps up to ``nbytes`` more resident. Only ever raises the threshold; returns whether
    it is set (False where the C library is not glibc).
    """
    global _heap_kept
    if nbytes <= _heap_kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, nbytes)
    except (OSError, AttributeError):
        return False
    if ok:
        _heap_kept = nbytes
    return bool(ok)


def vectorizable(model: nn.Module, cfg: TrainConfig) -> tuple[bool, str]:
    """Whether this model/optimizer pair can train on the vectorised path, and if not, why."""
    if any(True for _ in model.buffers()):
        return False, "the model has buffers (e.g. BatchNorm statistics)"
    if any(isinstance(m, _DROPOUT) and m.p > 0 for m in model.modules()):
        return (
            False,
            "the model has active dropout (its random masks would differ from the sequential path's)",
        )
    return True, ""


def optimizer_chain(model: nn.Module, cfg: TrainConfig) -> GradientTransformation:
    """The client optimizer as a gradient-core chain over stacked clients, with the model's parameter roles."""
    return make_chain(cfg.optimizer, model_roles(model), batch_dims=1, **cfg.optimizer_args)


def batch_plan(
    partitions: Sequence[np.ndarray], tasks: Sequence[ClientTask], cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the pooled training set each client reads at each step, ``[K, steps, B]``, and their mask.

    All ``tasks`` must have the same number of steps. Padding rows repeat the client's first example and are
    masked out of the loss. The batches are the sequential path's (``clients.local_sgd.train_local``: one
    ``randperm`` per epoch from the task's generator, cut every B), laid out as one padded
    ``[epochs, steps_per_epoch * B]`` block per client: one gather, not a copy per step.
    """
    bsz, epochs, k = cfg.batch_size, cfg.epochs, len(tasks)
    parts = [partitions[t.cid] for t in tasks]
    per_epoch = math.ceil(len(parts[0]) / bsz)
    steps, width = epochs * per_epoch, per_epoch * bsz
    pooled = np.zeros((k, width), dtype=np.int64)  # client i's rows, padded (never read past its n)
    order = torch.zeros(k, epochs, width, dtype=torch.long)  # padding: index 0, the client's first example
    mask = torch.zeros(k, epochs, width)
    for i, (part, task) in enumerate(zip(parts, tasks, strict=True)):
        n = len(part)
        pooled[i, :n] = part
        gen = torch.Generator().manual_seed(task.seed)
        for e in range(epochs):
            order[i, e, :n] = torch.randperm(n, generator=gen)
        mask[i, :, :n] = 1.0
    rows = torch.from_numpy(pooled).gather(1, order.view(k, -1))  # one gather for the whole chunk
    return rows.view(k, steps, bsz), mask.view(k, steps, bsz)


def _stacked_grads(model: nn.Module, direct: frozenset[str] = frozenset()):
    """``(params, x, y, mask) -> (grads, losses, taps)`` for K stacked clients: the forward pass in stacked
    kernels (:func:`~fedsim.engine.stacked_layers.stacked_forward`; other models vmapped over clients), the
    backward pass plain autograd of the sum of the clients' masked mean losses (separable, so row k of each
    gradient is client k's). ``vmap(grad_and_value(loss))`` computes the same to float rounding (a batched GEMM
    may sum in another order) but is slower per step (functorch's wrapping layers), and ``torch.func.grad``
    imports ``torch._dynamo`` (~1 s of start-up).

    ``direct`` (linear weights, stacked models only): no gradient is materialised for these; ``taps`` holds
    ``(name, input, output gradient)`` per linear layer instead, whose product is the weight's gradient."""
    stacked = stacked_forward(model)
    if stacked is None:
        vmapped = vmap(lambda p, x: functional_call(model, p, (x,)))
        forward = lambda p, x, taps: vmapped(p, x)  # noqa: E731
    else:
        forward = stacked

    def grads_and_losses(params, x, y, mask):
        leaves = {name: t if name in direct else t.detach().requires_grad_(True) for name, t in params.items()}
        taps: list | None = [] if direct else None
        logits = forward(leaves, x, taps)
        per_example = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        losses = (per_example.view(mask.shape) * mask).sum(1) / mask.sum(1)
        wanted = [n for n in leaves if n not in direct]
        outputs = [out for _, _, out in taps or ()]
        grads = torch.autograd.grad(
            losses.sum(), [leaves[n] for n in wanted] + outputs, allow_unused=True, materialize_grads=True
        )  # an unused parameter gets zeros, as under ``torch.func.grad``
        tapped = [(name, inp, g) for (name, inp, _), g in zip(taps or (), grads[len(wanted) :], strict=True)]
        return dict(zip(wanted, grads[: len(wanted)], strict=True)), losses.detach(), tapped

    return grads_and_losses


def train_chunk(
    model: nn.Module,
    theta: Mapping[str, torch.Tensor],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    rows: torch.Tensor,
    mask: torch.Tensor,
    cfg: TrainConfig,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Train K clients together for ``rows.shape[1]`` steps; return stacked final params and mean losses.

    ``rows``/``mask`` come from :func:`batch_plan`; ``train_x``/``train_y`` are the pooled training tensors on
    the model's device. The returned stacks are fresh memory (the caller may overwrite them), each in its
    gradient's layout (:func:`_laid_out_like`) or, for weights stepped directly, wider dimension last
    (:mod:`fedsim.engine.direct_sgd`). The first step reads the global parameters broadcast (no copy per client).
    When the optimizer ends in a constant scale (the learning rate of SGD, Adam, ...), that scale is folded into
    the in-place addition (``trailing_scale``); when nothing else is left of it (plain SGD) and the model has a
    stacked forward, its linear weights take ``factor · dYᵀ·X`` directly, without a materialised gradient.
    """
    device = train_x.device
    k, steps = rows.shape[0], rows.shape[1]
    rows, mask = rows.to(device), mask.to(device)
    params = {name: t.to(device).unsqueeze(0).expand(k, *t.shape) for name, t in theta.items()}
    tx = optimizer_chain(model, cfg)
    head, factor = tx.trailing_scale or (tx, 1.0)
    direct = frozenset()
    if is_identity(head) and stacked_forward(model) is not None:  # plain SGD: weights take x^T·dY directly
        direct = frozenset(linear_weights(model)) & set(params)
    state = None
    grads_and_losses = _stacked_grads(model, direct)  # one forward/backward per step for the chunk
    loss_sum = torch.zeros(k, device=device, dtype=torch.float64)
    counts = mask.sum(2).double()  # [K, steps]: examples per client and step
    for step in range(steps):
        r, m = rows[:, step], mask[:, step]
        grads, losses, taps = grads_and_losses(params, gather_rows(train_x, r), gather_rows(train_y, r), m)
        if state is None:  # the stack takes its gradients' memory layout, before the optimizer sees it
            params = _laid_out_like(params, grads) | {name: direct_sgd.weight_stack(params[name]) for name in direct}
            state = head.init({name: params[name] for name in grads})
        updates, state = head.update(grads, state, {name: params[name] for name in grads})
        with torch.no_grad():  # in place: the stack is ours, and fresh large allocations cost page faults
            for name, u in updates.items():
                params[name].add_(u.to(params[name].dtype), alpha=factor)
            for name, inputs, out_grad in taps:  # W += factor · dYᵀ·X, in W's own memory
                direct_sgd.step(params[name], inputs, out_grad, factor)
        loss_sum += losses.double() * counts[:, step]
    return params, loss_sum / mask.sum((1, 2)).double()


def gather_rows(pooled: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``pooled[rows]`` for an index tensor ``rows`` of any shape, through ``index_select`` on the flattened index:
    the same values, in a faster kernel on a CPU than advanced indexing for a chunk's mini-batches."""
    return pooled.index_select(0, rows.reshape(-1)).view(*rows.shape, *pooled.shape[1:])


def _laid_out_like(
    params: dict[str, torch.Tensor], grads: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``params`` named in ``grads`` (one client's parameters broadcast to K) copied into fresh stacks with each
    tensor's memory layout that of its gradient.

    A stacked linear layer's weight gradient comes out of the batched backward matmul transposed (strides
    ``(o·i, 1, o)`` for a ``[K, o, i]`` weight). Adding a transposed update to a contiguous stack is a strided
    walk through memory, the slowest step of a CPU round; with the stack laid out as its gradient, every
    optimizer step and update is elementwise over contiguous memory (and the forward matmul reads the weight
    untransposed). The result is the same to float rounding: the forward matmul's kernel sums in another order.
    """
    out = {}
    for name, g in grads.items():
        p = params[name]
        like = g if _dense(g) else torch.empty(g.shape, dtype=g.dtype, device=g.device)
        out[name] = broadcast_into(torch.empty_like(like, dtype=p.dtype), p[0])
    return out


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill its storage span exactly (a permutation of a contiguous layout)."""
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape, strict=True) if sz > 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def poisson_rows(
    parts: Sequence[torch.Tensor], rates: Sequence[float], generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DP-SGD step's Poisson batches for K clients, padded: pooled rows ``[K, B_max]`` and their mask.

    Client i includes each of its examples with probability ``rates[i]`` through exactly the draw Opacus'
    ``UniformWithReplacementSampler`` makes (``torch.rand(n_i, generator) < q_i``), so with the same generator
    both paths pick the same examples. Padding repeats the client's first row (finite, masked out); an all-empty
    step still has one (masked) column.
    """
    picks = [
        part[(torch.rand(len(part), generator=g) < q).nonzero(as_tuple=False).reshape(-1)]
        for part, q, g in zip(parts, rates, generators, strict=True)
    ]
    width = max(1, max(len(p) for p in picks))
    rows = torch.stack([part[:1].expand(width) for part in parts]).clone()
    mask = torch.zeros(len(parts), width)
    for i, p in enumerate(picks):
        rows[i, : len(p)] = p
        mask[i, : len(p)] = 1.0
    return rows, mask


def train_chunk_dp(
    model: nn.Module,
    theta: Mapping[str, torch.Tensor],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    parts: Sequence[torch.Tensor],
    seeds: Sequence[int],
    cfg: TrainConfig,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, list[float]]]:
    """DP-SGD for K clients with the same number of local steps: stacked final params, mean losses, diagnostics.

    Per step: every client's Poisson batch (:func:`poisson_rows`), per-example gradients of the whole stack in
    one ``vmap`` (``clients.dp_sgd.per_sample_grads``), then Opacus' clip-sum-noise-scale per client
    (``dp_sgd_aggregate`` with each client's own noise generator and expected batch size), then the client
    optimizer's chain over the stack. ``parts`` are the clients' rows in the pooled training set; ``seeds`` their
    task seeds (the generators' seeds in insecure mode).
    """
    from clients.dp_sgd import (  # opacus: DP runs only
        client_dp_generators,
        dp_sgd_aggregate,
        per_sample_grads,
    )
    from fedsim.privacy.sample_level import LocalSchedule

    dp = cfg.sample_dp
    assert dp is not None
    device = train_x.device
    k = len(parts)
    schedules = [LocalSchedule(len(p), cfg.batch_size) for p in parts]
    steps = cfg.epochs * schedules[0].steps_per_epoch
    generators = [client_dp_generators(seed, secure=dp.secure) for seed in seeds]
    samplers, noises = [g for g, _ in generators], [g for _, g in generators]
    rates = [s.sample_rate for s in schedules]
    divisor = torch.tensor([float(s.expected_batch_size) for s in schedules], device=device)
    params = {name: t.to(device).unsqueeze(0).expand(k, *t.shape).clone() for name, t in theta.items()}
    dim = sum(t.numel() for t in theta.values())
    tx = optimizer_chain(model, cfg)
    state = tx.init(params)
    loss_sum = torch.zeros(k, dtype=torch.float64)
    seen = torch.zeros(k, dtype=torch.float64)
    clipped = torch.zeros(k, dtype=torch.float64)
    signal = torch.zeros(k, dtype=torch.float64)
    norms_seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for _ in range(steps):
        rows, mask = poisson_rows(parts, rates, samplers)
        rows, mask_d = rows.to(device), mask.to(device)
        grads, losses = per_sample_grads(
            model, params, gather_rows(train_x, rows), gather_rows(train_y, rows), batch_dims=1, return_losses=True
        )
        private = dp_sgd_aggregate(
            grads,
            mask=mask_d,
            max_norm=dp.max_norm,
            noise_multiplier=dp.noise_multiplier,
            expected_batch_size=divisor,
            generator=noises,
            batch_dims=1,
        )
        updates, state = tx.update(private.grads, state, params)
        with torch.no_grad():
            for name, u in updates.items():
                params[name].add_(u.to(params[name].dtype))
        norms = private.norms.detach().cpu()
        loss_sum += (losses.detach().cpu().double() * mask).sum(1)
        seen += mask.sum(1).double()
        clipped += ((norms > dp.max_norm) & (mask != 0)).sum(1).double()
        signal += private.clipped_sum_norm.detach().cpu()
        norms_seen.append((norms, mask))
    std = dp.noise_multiplier * dp.max_norm
    stats = {
        "clipped_fraction": (clipped / seen).tolist(),
        "norm_p50": [
            float(np.median(torch.cat([n[i][m[i] != 0] for n, m in norms_seen]).numpy()))
            if seen[i] > 0
            else float("nan")
            for i in range(k)
        ],
        "signal_to_noise": [
            float("inf") if std <= 0 else float(x) / (std * dim**0.5) / steps for x in signal.tolist()
        ],
    }
    return params, loss_sum / seen, stats


def train_cohort_vectorized(
    model: nn.Module,
    global_params: Mapping[str, torch.Tensor],
    tasks: Sequence[ClientTask],
    data: FederatedData,
    cfg: TrainConfig,
) -> WorkerResult:
    """Same contract as the sequential trainer: Σ n_i (θ_i − θ) over the usable clients, per-client facts.

    ``data``'s pooled tensors should already be on the model's device (the worker puts them there once).
    """
    device = next(model.parameters()).device
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    acc = CohortAccumulator(global_params, cfg.clip, tasks)
    buckets: dict[int, list[ClientTask]] = {}
    for task in tasks:
        n = data.num_examples(task.cid)
        if n:
            buckets.setdefault(cfg.epochs * math.ceil(n / cfg.batch_size), []).append(task)
    one_client = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}
    slots = optimizer_slots(optimizer_chain(model, cfg), one_client)
    per_client = client_footprint_bytes(
        model,
        cfg.batch_size,
        data.input_shape,
        optimizer_slots=slots,
        per_example_grads=cfg.sample_dp is not None,
    )
    chunk = chunk_size(per_client, cfg.memory_budget_bytes)
    if device.type == "cpu":  # a few chunks' worth of freed memory stays in the heap for the next step
        keep_freed_memory(min(1 << 30, max(64 << 20, 4 * per_client * min(chunk, len(tasks)))))
    for members in buckets.values():
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            stats = None
            if cfg.sample_dp is None:
                rows, mask = batch_plan(data.partitions, part, cfg)
                stacked, losses = train_chunk(model, global_params, train_x, train_y, rows, mask, cfg)
            else:
                parts = [torch.from_numpy(np.array(data.partitions[t.cid], dtype=np.int64)) for t in part]
                stacked, losses, stats = train_chunk_dp(
                    model, global_params, train_x, train_y, parts, [t.seed for t in part], cfg
                )
            acc.add_stacked(
                [t.cid for t in part],
                stacked,
                [data.num_examples(t.cid) for t in part],
                losses.tolist(),
                stats,
                in_place=True,  # the trainers return fresh stacks
            )
    return acc.finish(order=[t.cid for t in tasks])
