"""The one registry of a run's random streams: every draw's key is (seed, stream, fixed-arity coordinates).

Why this module exists: numpy's ``SeedSequence`` pads short entropy with zero words and splits big integers into
32-bit words, so ad-hoc keys collide: ``SeedSequence([s, tag, v])`` equals ``SeedSequence([s, tag, v, 0])``, and
``[2**32]`` equals ``[0, 1]``. Two streams that shared a tag with different numbers of coordinates (an event
loop's ``online(cid, tick=0)`` and ``pick(version=cid)``) drew the same numbers. Here every stream has one tag
and one fixed list of coordinates, and :func:`entropy` encodes a key as a fixed-width word array that starts with
its own length, so two distinct keys never give the same entropy (``tests/test_randomness.py`` checks it with
hypothesis). Every random stream of the engine, the gossip network and the counter-based gossip draws
(``fedsim.gossip.randomness``) takes its tag from :class:`Stream`.

Seeds are non-negative integers below 2**128: the scenario seed (public: ``scenario.yaml`` publishes it) or a
secret one from :func:`secret_seed` (the OS CSPRNG), which DP runs use for their cohorts.
"""

from __future__ import annotations

import enum
import secrets

import numpy as np

SEED_BITS = 128
"""Seeds are encoded on four 32-bit words; coordinates on two."""
_SEED_WORDS, _COORD_WORDS = SEED_BITS // 32, 2


class Stream(enum.IntEnum):
    """The tag of every random stream of a run. Values are part of the results: never reuse or renumber one.

    ``GOSSIP_*`` are the purposes of the counter-based gossip draws (``fedsim.gossip.randomness``, coordinates
    node, event, lane); the others are numpy ``SeedSequence`` streams with the coordinates :data:`COORDINATES`
    names.
    """

    GOSSIP_INTERVAL = 1
    GOSSIP_AVAILABILITY = 2
    GOSSIP_FAILURE = 3
    GOSSIP_BATCH = 4
    GOSSIP_FIRST = 5
    MODEL_INIT = 6
    DEVICE = 7
    ROUND = 8
    COHORT = 9
    CLIENT_SEED = 10
    NOISE = 11
    EVENT_ONLINE = 12
    EVENT_FAILURE = 13
    EVENT_PICK = 14
    TOPOLOGY = 15
    FAULT_NONFINITE = 16
    STRAGGLER = 17
    GOSSIP_NONFINITE = 18
    DATA_CLIENT = 19


COORDINATES: dict[Stream, tuple[str, ...]] = {
    Stream.MODEL_INIT: (),
    Stream.DEVICE: (),
    Stream.ROUND: ("round",),  # a synchronous round's availability and failures (and a non-DP cohort)
    Stream.COHORT: ("round",),  # a DP round's cohort: seeded by a secret unless privacy.insecure_seed
    Stream.CLIENT_SEED: ("round", "cid"),
    Stream.NOISE: (),  # DP noise with privacy.insecure_seed (else the OS CSPRNG)
    Stream.EVENT_ONLINE: ("cid", "tick"),
    Stream.EVENT_FAILURE: ("cid", "tick"),
    Stream.EVENT_PICK: ("version",),
    Stream.TOPOLOGY: (),
    Stream.FAULT_NONFINITE: ("round", "cid"),  # faults.nonfinite: whether a client's update comes back NaN
    Stream.STRAGGLER: (),  # faults.stragglers: who is a straggler, drawn once per run
    Stream.DATA_CLIENT: ("cid",),  # a client-drawn dataset's examples of one client (data.args.draw: client)
    **{s: ("node", "event", "lane") for s in Stream if s.name.startswith("GOSSIP_")},
}
"""The coordinates each stream is keyed by, in order (a key must give exactly these)."""


def entropy(seed: int, stream: Stream, *coords: int) -> np.ndarray:
    """The key (seed, stream, coords) as a fixed-width array of 32-bit words, led by its length.

    Injective: distinct keys give distinct arrays, and no array is another with zeros appended (its length word
    differs), so ``SeedSequence``'s zero padding cannot make two keys meet.

    Raises:
        ValueError: the seed or a coordinate is out of range, or ``coords`` does not match the stream's arity.
    """
    stream = Stream(stream)
    names = COORDINATES[stream]
    if len(coords) != len(names):
        raise ValueError(f"stream {stream.name} takes coordinates {names}. Got {coords!r}.")
    if not 0 <= int(seed) < 2**SEED_BITS:
        raise ValueError(f"seed must be an integer in [0, 2**{SEED_BITS}). Got {seed!r}.")
    for name, c in zip(names, coords, strict=True):
        if not 0 <= int(c) < 2 ** (32 * _COORD_WORDS):
            raise ValueError(f"{stream.name}.{name} must be an integer in [0, 2**64). Got {c!r}.")
    n = 2 + _SEED_WORDS + _COORD_WORDS * len(coords)
    words = [n, int(stream), *_words(int(seed), _SEED_WORDS)]
    for c in coords:
        words += _words(int(c), _COORD_WORDS)
    return np.asarray(words, dtype=np.uint32)


def _words(value: int, count: int) -> list[int]:
    return [(value >> (32 * i)) & 0xFFFFFFFF for i in range(count)]


def seed_sequence(seed: int, stream: Stream, *coords: int) -> np.random.SeedSequence:
    """The ``SeedSequence`` of one key (see :func:`entropy`)."""
    return np.random.SeedSequence(entropy(seed, stream, *coords))


def generator(seed: int, stream: Stream, *coords: int) -> np.random.Generator:
    """A numpy ``Generator`` for one key."""
    return np.random.default_rng(seed_sequence(seed, stream, *coords))


def derive_int(seed: int, stream: Stream, *coords: int, bits: int = 63) -> int:
    """A ``bits``-bit integer for one key (a torch seed: 63 bits; a 31-bit client training seed)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64. Got {bits!r}.")
    word = int(seed_sequence(seed, stream, *coords).generate_state(1, dtype=np.uint64)[0])
    return word >> (64 - bits)


def secret_seed() -> int:
    """A fresh seed from the OS CSPRNG (``secrets``): for draws that must stay secret (DP cohorts)."""
    return secrets.randbits(SEED_BITS)
