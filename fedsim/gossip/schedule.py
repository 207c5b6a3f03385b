"""When each gossip node trains, and whether it is up: the authors' U[lo, hi] ticks or device-profile intervals.

Why this module exists: the protocol's clock is the same in the in-process simulator and on the engine's workers;
only the schedule decides who acts at a tick. Every draw is counter-based (``fedsim.gossip.randomness``), keyed by
the node and its event number, so a node's schedule does not depend on which process runs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.errors import ConfigError
from fedsim.gossip.randomness import AVAILABILITY, FAILURE, FIRST, INTERVAL, NONFINITE, uniform


@dataclass(frozen=True)
class Schedule:
    """Per-node event times and availability.

    Args:
        seed: the run's seed (all draws derive from it).
        interval: ``(lo, hi)``: each gap between a node's events is uniform on ``lo..hi`` ticks (the authors'
            simulator: 8..12), unless ``fixed`` is given.
        fixed: per-node gap in ticks (indexed by global node id), e.g. from device profiles
            (:func:`profile_intervals`); the first event is then uniform on ``1..gap`` so nodes are not in step.
        availability: at each of its events a node is online with this probability until its next event.
        failure: probability that an online node's training step fails (its model is unchanged; it still gossips):
            ``faults.crash``.
        trace: per-node online intervals in virtual seconds (``population.devices.availability.trace``); a listed
            node is online at an event iff ``tick · tick_s`` falls in one of its intervals (no draw).
        tick_s: virtual seconds per tick (for traces and reporting).
        nonfinite: probability that a node's training at an event gives a non-finite model (``faults.nonfinite``;
            the shard then keeps the node's previous model and the node sends nothing at that tick).
        straggler: which nodes (a bool per global node id) are stragglers (``faults.stragglers``): each of their
            gaps, the first event's offset included, is ``⌈gap · slowdown⌉`` ticks. None: no stragglers.
        slowdown: the stragglers' factor (>= 1).
    """

    seed: int = 0
    interval: tuple[int, int] = (8, 12)
    fixed: np.ndarray | None = None
    availability: float = 1.0
    failure: float = 0.0
    trace: Mapping[int, Sequence[tuple[float, float]]] | None = None
    tick_s: float = 1.0
    nonfinite: float = 0.0
    straggler: np.ndarray | None = None
    slowdown: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = self.interval
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ConfigError("gossip.interval", "two integers 1 <= lo <= hi", list(self.interval))
        if not 0.0 < self.availability <= 1.0:
            raise ConfigError(
                "population.devices.availability", "a probability in (0, 1] for gossip", self.availability
            )
        if not 0.0 <= self.failure < 1.0:
            raise ConfigError("faults.crash", "a probability in [0, 1)", self.failure)
        if not 0.0 <= self.nonfinite < 1.0:
            raise ConfigError("faults.nonfinite", "a probability in [0, 1)", self.nonfinite)
        if not (1.0 <= self.slowdown and math.isfinite(self.slowdown)):
            raise ConfigError("faults.stragglers.slowdown", "a number >= 1", self.slowdown)
        if self.fixed is not None and (np.asarray(self.fixed) < 1).any():
            raise ValueError("fixed intervals must be >= 1 tick")

    def _gap(self, nodes: np.ndarray, events: np.ndarray, purpose: int) -> np.ndarray:
        u = uniform(self.seed, purpose, nodes, events)
        if self.fixed is None:
            lo, hi = self.interval
            gap = lo + np.floor(u * (hi - lo + 1)).astype(np.int64)
        else:
            gap = np.asarray(self.fixed, dtype=np.int64)[nodes]
            gap = gap if purpose == INTERVAL else 1 + np.floor(u * gap).astype(np.int64)
        if self.straggler is None:
            return gap
        slow = self.straggler[np.asarray(nodes, dtype=np.int64)]
        return np.where(slow, np.ceil(gap * self.slowdown - 1e-9).astype(np.int64), gap)

    def first_events(self, nodes: np.ndarray) -> np.ndarray:
        """Each node's first event tick (>= 1)."""
        return self._gap(nodes, np.zeros(len(nodes), dtype=np.int64), FIRST)

    def gaps(self, nodes: np.ndarray, events: np.ndarray) -> np.ndarray:
        """The ticks from each node's event number ``events`` to its next one."""
        return self._gap(nodes, events, INTERVAL)

    def online(self, nodes: np.ndarray, events: np.ndarray, tick: int) -> np.ndarray:
        """Whether each node is up at its event (and so until its next event)."""
        up = uniform(self.seed, AVAILABILITY, nodes, events) < self.availability
        if self.trace:
            t = tick * self.tick_s
            for r, node in enumerate(nodes):
                spans = self.trace.get(int(node))
                if spans is not None:
                    up[r] = any(a <= t < b for a, b in spans)
        return up

    def failed(self, nodes: np.ndarray, events: np.ndarray) -> np.ndarray:
        """Whether each node's training step at this event fails."""
        if self.failure == 0.0:
            return np.zeros(len(nodes), dtype=bool)
        return uniform(self.seed, FAILURE, nodes, events) < self.failure

    def nonfinite_at(self, nodes: np.ndarray, events: np.ndarray) -> np.ndarray:
        """Whether each node's training at this event gives a non-finite model (``faults.nonfinite``)."""
        if self.nonfinite == 0.0:
            return np.zeros(len(nodes), dtype=bool)
        return uniform(self.seed, NONFINITE, nodes, events) < self.nonfinite

    @property
    def varies_availability(self) -> bool:
        return self.availability < 1.0 or bool(self.trace)


def profile_intervals(
    speed: np.ndarray,
    bandwidth: np.ndarray,
    *,
    work: np.ndarray,
    model_bytes: int,
    fanout: np.ndarray,
    tick_s: float,
) -> np.ndarray:
    """Per-node gap in ticks from device profiles: ``⌈(work/speed + fanout·model_bytes/bandwidth)/tick_s⌉``
    (training ``work`` examples, then sending the model to ``fanout`` neighbours), at least 1 tick."""
    if not (tick_s > 0 and math.isfinite(tick_s)):
        raise ConfigError("gossip.tick_s", "a number of virtual seconds > 0", tick_s)
    seconds = np.asarray(work, dtype=np.float64) / speed + np.asarray(fanout) * model_bytes / bandwidth
    return np.maximum(1, np.ceil(seconds / tick_s - 1e-9)).astype(np.int64)
