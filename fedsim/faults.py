"""The draws of the scenario's ``faults`` block: who sends a non-finite update, who is a straggler.

Why this module exists: a fault must hit the same clients whichever worker trains them and however the population
is sharded, so every draw here is counter-based on the scenario seed (``fedsim.randomness``): whether client
``cid`` sends a non-finite update in ``round`` is a function of (seed, round, cid) alone, and the set of
stragglers of (seed, population) alone. It sits below the clients, the gossip protocol, the device profiles and
the engine (``docs/architecture.md``, Layers), which all read it, and takes plain numbers, not the schema.
Where each family applies a fault is in ``docs/scenarios.md`` (Faults).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedsim.randomness import Stream, derive_int, generator

_UNIT_BITS = 53
"""A uniform draw in [0, 1) is a 53-bit integer over 2^53 (every float64 in the grid is exact)."""


def nonfinite_draw(seed: int, round: int, cid: int) -> float:
    """Client ``cid``'s uniform draw in [0, 1) for ``faults.nonfinite`` in ``round``; its update comes back
    non-finite when the draw is below the probability."""
    return derive_int(seed, Stream.FAULT_NONFINITE, round, cid, bits=_UNIT_BITS) / 2.0**_UNIT_BITS


def nonfinite_clients(seed: int, round: int, cids: Iterable[int], probability: float) -> frozenset[int]:
    """Which of ``cids`` send a non-finite update in ``round`` (none when ``probability`` is 0, with no draw)."""
    if probability <= 0.0:
        return frozenset()
    return frozenset(int(c) for c in cids if nonfinite_draw(seed, round, int(c)) < probability)


def straggler_count(clients: int, fraction: float) -> int:
    """How many of ``clients`` are stragglers: ``fraction × clients`` rounded to the nearest integer (halves up)."""
    return min(clients, int(np.floor(fraction * clients + 0.5)))


def straggler_mask(seed: int, clients: int, fraction: float) -> np.ndarray | None:
    """Which clients are stragglers (a bool per client), drawn once per run without replacement from the
    ``STRAGGLER`` stream; None when there are none (no draw, no array)."""
    k = straggler_count(clients, fraction)
    if k == 0:
        return None
    mask = np.zeros(clients, dtype=bool)
    mask[generator(seed, Stream.STRAGGLER).choice(clients, size=k, replace=False)] = True
    return mask
