"""What every loop of the engine shares about a run: where its rows and checkpoints go (:class:`Recorder`), its
outcome (:class:`RunSummary`), the clients' training seeds, central evaluation, the timing keys of a row, and which
loop runs a strategy and whether that loop implements the scenario's DP level."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from fedsim.errors import ConfigError
from fedsim.randomness import Stream, derive_int
from fedsim.scenario import Scenario
from strategies import Decentralised, EventStrategy


class Recorder(Protocol):
    """Where the loop puts what it produces (a results folder, or memory in tests)."""

    def write_round(self, row: Mapping[str, Any]) -> None: ...

    def save_checkpoint(
        self, *, round: int, params: Mapping[str, torch.Tensor], strategy_state: Any, final: bool = False
    ) -> None:
        """Keep a checkpoint; ``final``: the run's last one (its model is the run's result)."""


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


def round_timings(
    *, start: float, t0: float, t_replies: float, t_aggregated: float, train_s: float
) -> dict[str, float]:
    """A round's timing keys (monotonic clock readings: run start, round start, replies in, aggregated; now =
    the end): wall so far, the round's wall, and its split into dispatch, training, aggregation, evaluation."""
    done = time.monotonic()
    return {
        "wall_time_s": round(done - start, 4),
        "round_wall_s": round(done - t0, 4),
        "time_dispatch_s": round(t_replies - t0 - train_s, 4),
        "time_train_s": round(train_s, 4),
        "time_aggregate_s": round(t_aggregated - t_replies, 4),
        "time_eval_s": round(done - t_aggregated, 4),
    }


LOOP_PRIVACY: Mapping[str, frozenset[str]] = {
    "sync": frozenset({"client", "sample"}),
    "diff2": frozenset({"sample"}),
    "event": frozenset(),
    "gossip": frozenset(),
}
"""The DP levels each run loop implements (noise, accounting, secret cohorts); the others it refuses."""


def loop_of(strategy: Any) -> str:
    """Which run loop drives ``strategy``: ``gossip``, ``event``, ``diff2`` or ``sync``."""
    from strategies.diff2 import Diff2Strategy

    if isinstance(strategy, Decentralised):
        return "gossip"
    if isinstance(strategy, EventStrategy):
        return "event"
    if isinstance(strategy, Diff2Strategy):
        return "diff2"
    return "sync"


def check_loop_privacy(scenario: Scenario, loop: str) -> None:
    """Refuse a DP scenario in a loop that does not implement its level: such a run would add no noise and
    still write an ε. Validation refuses it too, but the Flower App's ``scenario-json`` path skips validation.

    Raises:
        ConfigError: naming ``privacy`` and the loop.
    """
    if scenario.privacy is None or scenario.privacy.level in LOOP_PRIVACY[loop]:
        return
    levels = sorted(LOOP_PRIVACY[loop])
    raise ConfigError(
        "privacy",
        f"null with strategy {scenario.strategy.name!r}: its {loop} loop implements "
        + (f"DP level {' or '.join(map(repr, levels))} only" if levels else "no differential privacy"),
        scenario.privacy.level,
    )
