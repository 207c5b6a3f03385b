"""Counter-based random numbers for gossip nodes: a draw is a pure function of (seed, purpose, node, event, lane).

Why this module exists: in the engine a gossip node lives on whichever worker owns it, and workers run their
nodes' events in any grouping. A shared random stream would make a node's draws depend on that grouping; a
counter-based generator (a SplitMix64 hash of the draw's coordinates, as in Salmon et al.'s counter-based
generators) gives every node the same draws whether one process runs all nodes or many workers share them, and
needs no generator state to checkpoint.

References:
    Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014 (SplitMix64).
    Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011 (counter-based RNGs).
"""

from __future__ import annotations

import numpy as np

from fedsim.randomness import Stream

INTERVAL = Stream.GOSSIP_INTERVAL
"""Purpose tags (from the run's one registry of streams, ``fedsim.randomness``): the gap to a node's next event,
its availability at an event, a failed training step, batch picks, the first event's offset, a non-finite
training result (``faults.nonfinite``)."""
AVAILABILITY = Stream.GOSSIP_AVAILABILITY
FAILURE = Stream.GOSSIP_FAILURE
BATCH = Stream.GOSSIP_BATCH
FIRST = Stream.GOSSIP_FIRST
NONFINITE = Stream.GOSSIP_NONFINITE

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_KEYS = tuple(np.uint64(k) for k in (0xD1B54A32D192ED03, 0xABC98388FB8FAC03, 0x8CB92BA72F3D8DD7))
"""One odd multiplier per coordinate: node, event, lane."""


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (a bijection of 64-bit words with good avalanche)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(
    seed: int, purpose: int, node: np.ndarray | int, event: np.ndarray | int, lane: np.ndarray | int = 0
) -> np.ndarray:
    """Uniform floats in [0, 1), one per broadcast element of ``node``, ``event`` and ``lane``; the same
    coordinates always give the same number."""
    with np.errstate(over="ignore"):
        z = np.full(1, np.uint64(seed % 2**64), dtype=np.uint64) * _GOLDEN + np.uint64(int(purpose))
        for key, part in zip(_KEYS, (node, event, lane), strict=True):
            z = _mix(z ^ (np.asarray(part, dtype=np.int64).astype(np.uint64) * key + _GOLDEN))
        z = _mix(z + _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def pick_without_replacement(seed: int, node: int, event: int, population: int, k: int) -> np.ndarray:
    """``min(k, population)`` distinct indices in ``[0, population)`` for one node's event (its mini-batch)."""
    keys = uniform(seed, BATCH, node, event, np.arange(population))
    return np.argsort(keys, kind="stable")[:k]
