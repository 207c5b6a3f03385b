"""What every loop of the engine shares about a run: where its rows and checkpoints go (:class:`Recorder`), its
outcome (:class:`RunSummary`), the clients' training seeds and central evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from fedsim.randomness import Stream, derive_int


class Recorder(Protocol):
    """Where the loop puts what it produces (a results folder, or memory in tests)."""

    def write_round(self, row: Mapping[str, Any]) -> None: ...

    def save_checkpoint(
        self,
        *,
        round: int,
        params: Mapping[str, torch.Tensor],
        strategy_state: Any,
        final: bool = False,
        resume: Mapping[str, Any] | None = None,
    ) -> Any:
        """Keep a checkpoint after step ``round``; ``final``: the run's last one (its model is the run's
        result); ``resume``: what continuing the run from here needs (``fedsim.engine.driver``). Returns where
        it was kept (or None)."""


@dataclass
class RunSummary:
    """The outcome of a finished run: its length and the last metrics row."""

    rounds: int
    last_row: dict[str, Any] = field(default_factory=dict)


def client_seed(scenario_seed: int, round: int, cid: int) -> int:
    """The training seed of client ``cid`` in ``round`` (31-bit; independent of sharding)."""
    return derive_int(scenario_seed, Stream.CLIENT_SEED, round, cid, bits=31)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 2048
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (x, y)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return loss_sum / len(x), correct / len(x)
