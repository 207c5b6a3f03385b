"""The strategy protocol: server logic over logical clients, as hooks with explicit state.

The engine owns the loop (rounds, clock, timeouts, checkpoints, logging); a strategy only answers two
questions each round: *which clients train, with what config* (``configure_round``) and *what is the new
model given the clients' reduced updates* (``aggregate``). State goes in and comes out; nothing is kept on
``self`` between the two calls, so strategies are testable in plain pytest without Flower or Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

Params = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class RoundPlan:
    """What a strategy asks for in one round: the clients to train and config shared by all of them."""

    client_ids: tuple[int, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    quorum: int | None = None
    """Close the round as soon as this many clients' results have arrived (over-selection: aggregate the first
    K of N); the rest are counted as late. Results come per node message, so with several clients per node (in
    simulation) the round may keep a few more than K. None: wait for every reply, up to the round deadline."""


@dataclass(frozen=True)
class ReducedUpdates:
    """The clients' results reduced over the cohort (one sum per worker, then summed by the engine).

    Attributes:
        weighted_delta_sum: Σ_i w_i · (θ_i − θ) per tensor, over the clients that replied.
        weight_sum: Σ_i w_i (w_i = the client's number of training examples).
        num_clients: how many clients contributed.
        update_norms: with client-level DP clipping, each contributing client's update norm before clipping.
        client_stats: per-client diagnostics by name, over the contributing clients (e.g. sample-level DP's
            fraction of example gradients clipped).
    """

    weighted_delta_sum: Mapping[str, torch.Tensor]
    weight_sum: float
    num_clients: int
    update_norms: tuple[float, ...] = ()
    client_stats: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregateResult:
    """A strategy's answer to ``aggregate``: the new global parameters, its new state and metrics to log."""

    params: dict[str, torch.Tensor]
    state: Any
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Strategy(Protocol):
    """A synchronous, model-averaging server strategy."""

    def init(self, params: Params) -> Any:
        """Return the strategy's initial state for the initial global parameters."""
        ...

    def configure_round(
        self, state: Any, *, round: int, available: Sequence[int] | np.ndarray, rng: np.random.Generator
    ) -> RoundPlan:
        """Choose this round's clients among the ``available`` ones, using only ``rng`` for randomness."""
        ...

    def aggregate(self, state: Any, params: Params, updates: ReducedUpdates) -> AggregateResult:
        """Fold the cohort's reduced updates into new global parameters."""
        ...
