"""Local training of one logical client: epochs of mini-batch steps with a registered optimizer.

This is the sequential path (one client at a time, a real ``torch.optim.Optimizer``); the engine's cohort
trainer calls it once per client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clients.optimizers import build, embedding_names


@dataclass(frozen=True)
class LocalResult:
    """What local training reports besides the new weights (which stay in the model)."""

    num_examples: int
    steps: int
    mean_loss: float


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    optimizer: str,
    optimizer_args: Mapping[str, Any],
    generator: torch.Generator,
) -> LocalResult:
    """Train ``model`` in place on (x, y) for ``epochs`` with shuffled mini-batches drawn from ``generator``.

    The last batch of an epoch may be smaller. The loss is cross-entropy; ``mean_loss`` is the example-weighted
    mean training loss over all steps.
    """
    n = int(x.shape[0])
    if n == 0:
        return LocalResult(num_examples=0, steps=0, mean_loss=float("nan"))
    opt = build(optimizer, model.named_parameters(), embeddings=embedding_names(model), **optimizer_args)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            steps += 1
    return LocalResult(num_examples=n, steps=steps, mean_loss=total / seen)
