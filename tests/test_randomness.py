"""The registry of random streams: distinct keys never share entropy or state (the collision it replaces)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedsim.randomness import COORDINATES, SEED_BITS, Stream, derive_int, entropy, generator, seed_sequence


def keys() -> st.SearchStrategy[tuple[int, Stream, tuple[int, ...]]]:
    """Any valid key: a seed, a stream, and as many coordinates as the stream takes (edge values included)."""
    coord = st.one_of(st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**64 - 1]), st.integers(0, 2**64 - 1))
    seed = st.one_of(
        st.sampled_from([0, 1, 2**32, 2**64, 2**SEED_BITS - 1]), st.integers(0, 2**SEED_BITS - 1)
    )
    return st.sampled_from(list(Stream)).flatmap(
        lambda s: st.tuples(seed, st.just(s), st.tuples(*[coord] * len(COORDINATES[s])))
    )


def test_the_old_keys_collided():
    """Why the registry exists: SeedSequence pads short entropy with zeros, so [s, tag, v] == [s, tag, v, 0]
    (the event loop's online(cid, tick=0) and pick(version=cid) drew the same numbers), and big ints split."""
    old = np.random.SeedSequence([5, 2, 7]).generate_state(4)
    assert (old == np.random.SeedSequence([5, 2, 7, 0]).generate_state(4)).all()
    assert (
        np.random.SeedSequence([2**32]).generate_state(4) == np.random.SeedSequence([0, 1]).generate_state(4)
    ).all()
    online = generator(5, Stream.EVENT_ONLINE, 7, 0).random(4)
    pick = generator(5, Stream.EVENT_PICK, 7).random(4)
    assert not np.array_equal(online, pick)


@given(keys(), keys())
def test_distinct_keys_have_distinct_entropy_and_state(a, b):
    (sa, ta, ca), (sb, tb, cb) = a, b
    ea, eb = entropy(sa, ta, *ca), entropy(sb, tb, *cb)
    if (sa, int(ta), ca) == (sb, int(tb), cb):
        assert np.array_equal(ea, eb)
        return
    assert not np.array_equal(ea, eb)
    # neither is the other with zeros appended (SeedSequence's padding), and the generator states differ
    short, long_ = sorted((ea, eb), key=len)
    assert not (np.array_equal(long_[: len(short)], short) and not long_[len(short) :].any())
    assert not np.array_equal(
        seed_sequence(sa, ta, *ca).generate_state(4), seed_sequence(sb, tb, *cb).generate_state(4)
    )


@given(keys())
def test_a_key_always_gives_the_same_draws(key):
    seed, stream, coords = key
    assert np.array_equal(
        generator(seed, stream, *coords).random(3), generator(seed, stream, *coords).random(3)
    )
    assert 0 <= derive_int(seed, stream, *coords, bits=31) < 2**31


@pytest.mark.parametrize(
    ("seed", "stream", "coords", "match"),
    [
        (0, Stream.EVENT_PICK, (1, 2), "EVENT_PICK takes coordinates"),
        (0, Stream.CLIENT_SEED, (1,), "CLIENT_SEED takes coordinates"),
        (-1, Stream.DEVICE, (), "seed must be"),
        (2**SEED_BITS, Stream.DEVICE, (), "seed must be"),
        (0, Stream.ROUND, (-1,), "ROUND.round must be"),
        (0, Stream.ROUND, (2**64,), "ROUND.round must be"),
    ],
)
def test_bad_keys_are_refused_with_one_line(seed, stream, coords, match):
    with pytest.raises(ValueError, match=match):
        entropy(seed, stream, *coords)


def test_every_stream_has_its_coordinates_and_gossip_keeps_its_purposes():
    from fedsim.gossip import randomness as gossip

    assert set(COORDINATES) == set(Stream)
    # the counter-based gossip draws take their purposes from the registry, with their old values (draws kept)
    assert (gossip.INTERVAL, gossip.AVAILABILITY, gossip.FAILURE, gossip.BATCH, gossip.FIRST) == (
        1,
        2,
        3,
        4,
        5,
    )
    assert all(isinstance(p, Stream) for p in (gossip.INTERVAL, gossip.BATCH))
