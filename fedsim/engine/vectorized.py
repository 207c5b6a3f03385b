"""Vectorised cohort training: a worker's clients trained together with ``torch.func``.

Clients are bucketed by their number of local steps; each bucket's parameters are stacked ``[K, ...]`` and
one ``vmap(grad(loss))`` call computes every client's gradient for its current mini-batch. Unequal batch
sizes (a client's last batch) are padded and masked, so each client's loss is the mean over its real
examples, exactly as on the sequential path. Shuffling uses the same per-client generator draws as the
sequential path, so the two agree to float tolerance.

Supported: models without buffers (no BatchNorm), SGD with optional momentum/Nesterov and weight decay
(``torch.optim.SGD`` semantics). ``vectorizable`` says whether a model and optimizer qualify.

References:
    Paszke et al., "PyTorch: An Imperative Style, High-Performance Deep Learning Library", NeurIPS 2019
    (``torch.func`` is the functorch API); the per-worker in-process cohort follows pfl-research (Granqvist et
    al., "pfl-research: simulation framework for accelerating research in Private Federated Learning",
    arXiv 2404.06430, 2024).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedsim.data import FederatedData
from fedsim.engine.accumulate import CohortAccumulator
from fedsim.engine.protocol import ClientTask, TrainConfig, WorkerResult

_SGD_ARGS = {"lr", "momentum", "nesterov", "weight_decay"}


def vectorizable(model: nn.Module, cfg: TrainConfig) -> tuple[bool, str]:
    """Whether this model/optimizer pair can train on the vectorised path, and if not, why."""
    if any(True for _ in model.buffers()):
        return False, "the model has buffers (e.g. BatchNorm statistics)"
    if cfg.optimizer != "sgd" or not set(cfg.optimizer_args) <= _SGD_ARGS:
        return False, f"optimizer {cfg.optimizer!r} has no vectorised form yet (sgd only)"
    return True, ""


def _client_batches(n: int, *, epochs: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """The index batches the sequential path draws for a client (same generator, same order)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        batches += [order[s : s + batch_size] for s in range(0, n, batch_size)]
    return batches


def _train_bucket(
    model: nn.Module,
    theta: Mapping[str, torch.Tensor],
    clients: Sequence[tuple[ClientTask, torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train clients with equal step counts together; return stacked final params and mean losses."""
    device = next(model.parameters()).device
    k, bsz = len(clients), cfg.batch_size
    lr = float(cfg.optimizer_args.get("lr", 0.01))
    mom = float(cfg.optimizer_args.get("momentum", 0.0))
    nesterov = bool(cfg.optimizer_args.get("nesterov", False))
    wd = float(cfg.optimizer_args.get("weight_decay", 0.0))
    plans = [_client_batches(len(x), epochs=cfg.epochs, batch_size=bsz, seed=t.seed) for t, x, _ in clients]
    steps = len(plans[0])
    params = {
        name: theta[name].to(device).unsqueeze(0).repeat(k, *([1] * theta[name].dim())) for name in theta
    }
    bufs = {name: torch.zeros_like(p) for name, p in params.items()} if mom else {}

    def loss_fn(p, x, y, mask):
        logits = functional_call(model, p, (x,))
        per_example = nn.functional.cross_entropy(logits, y, reduction="none")
        return (per_example * mask).sum() / mask.sum()

    grads_and_losses = vmap(grad_and_value(loss_fn))  # one forward/backward per step for the whole bucket
    xs = [x.to(device) for _, x, _ in clients]
    ys = [y.to(device) for _, _, y in clients]
    feat = xs[0].shape[1:]
    loss_sum = torch.zeros(k, device=device, dtype=torch.float64)
    seen = torch.zeros(k, device=device, dtype=torch.float64)
    for step in range(steps):
        xb = torch.zeros(k, bsz, *feat, device=device, dtype=xs[0].dtype)
        yb = torch.zeros(k, bsz, device=device, dtype=torch.long)
        mask = torch.zeros(k, bsz, device=device)
        for i in range(k):
            idx = plans[i][step].to(device)
            xb[i, : len(idx)], yb[i, : len(idx)], mask[i, : len(idx)] = xs[i][idx], ys[i][idx], 1.0
        grads, losses = grads_and_losses(params, xb, yb, mask)
        with torch.no_grad():
            counts = mask.sum(1).double()
            loss_sum += losses.double() * counts
            seen += counts
            for name in params:
                g = grads[name] + wd * params[name] if wd else grads[name]
                if mom:
                    # torch.optim.SGD: buf = g on the first step, then μ·buf + g (dampening 0).
                    bufs[name] = g if step == 0 else mom * bufs[name] + g
                    g = g + mom * bufs[name] if nesterov else bufs[name]
                params[name] = params[name] - lr * g
    return params, (loss_sum / seen).tolist()


def train_cohort_vectorized(
    model: nn.Module,
    global_params: Mapping[str, torch.Tensor],
    tasks: Sequence[ClientTask],
    data: FederatedData,
    cfg: TrainConfig,
) -> WorkerResult:
    """Same contract as the sequential trainer: Σ n_i (θ_i − θ) over the usable clients, per-client facts."""
    acc = CohortAccumulator(global_params)
    buckets: dict[int, list[tuple[ClientTask, torch.Tensor, torch.Tensor]]] = {}
    for task in tasks:
        x, y = data.client_data(task.cid)
        if len(x) == 0:
            continue
        buckets.setdefault(cfg.epochs * math.ceil(len(x) / cfg.batch_size), []).append((task, x, y))
    done: dict[int, tuple[dict[str, torch.Tensor], int, float]] = {}
    for members in buckets.values():
        stacked, losses = _train_bucket(model, global_params, members, cfg)
        for i, (task, x, _) in enumerate(members):
            done[task.cid] = ({k: v[i] for k, v in stacked.items()}, len(x), losses[i])
    for task in tasks:  # the task order, as on the sequential path
        if task.cid in done:
            acc.add(task.cid, *done[task.cid])
    return acc.finish()
