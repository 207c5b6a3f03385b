"""The fault draws (``fedsim.faults``): counter-based on the scenario seed, so the same whichever worker draws them,
in whatever order; the new streams are registered at the end of ``fedsim.randomness.Stream``."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.faults import nonfinite_clients, nonfinite_draw, straggler_count, straggler_mask
from fedsim.randomness import COORDINATES, Stream, entropy


def test_the_fault_streams_are_new_tags_with_their_coordinates():
    assert (Stream.FAULT_NONFINITE, Stream.STRAGGLER, Stream.GOSSIP_NONFINITE) == (16, 17, 18)
    assert sorted(s.value for s in Stream) == list(range(1, len(Stream) + 1))  # appended: no tag reused or skipped
    assert COORDINATES[Stream.FAULT_NONFINITE] == ("round", "cid")
    assert COORDINATES[Stream.STRAGGLER] == ()
    assert COORDINATES[Stream.GOSSIP_NONFINITE] == ("node", "event", "lane")
    with pytest.raises(ValueError, match="FAULT_NONFINITE"):
        entropy(0, Stream.FAULT_NONFINITE, 1)  # a key must give both coordinates


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_who_sends_a_nonfinite_update_does_not_depend_on_the_workers(workers):
    cids = np.arange(200)
    everyone = nonfinite_clients(11, 4, cids, 0.3)
    shards = [cids[cids % workers == w] for w in range(workers)]
    by_worker = [nonfinite_clients(11, 4, s[::-1], 0.3) for s in shards]  # any order within a worker
    assert frozenset().union(*by_worker) == everyone
    assert all(b <= frozenset(s.tolist()) for b, s in zip(by_worker, shards, strict=True))


def test_the_nonfinite_draw_is_keyed_by_seed_round_and_client():
    cids = range(300)
    base = nonfinite_clients(5, 1, cids, 0.5)
    assert base == nonfinite_clients(5, 1, cids, 0.5)
    assert base != nonfinite_clients(6, 1, cids, 0.5)
    assert base != nonfinite_clients(5, 2, cids, 0.5)
    # a larger probability keeps every client a smaller one drew (one uniform per key, thresholded)
    assert nonfinite_clients(5, 1, cids, 0.2) <= base <= nonfinite_clients(5, 1, cids, 0.8)
    assert nonfinite_clients(5, 1, cids, 0.0) == frozenset()


def test_the_nonfinite_draw_has_the_probability_it_is_given():
    draws = np.array([nonfinite_draw(3, 7, c) for c in range(20000)])
    assert ((draws >= 0) & (draws < 1)).all()
    # 20 000 Bernoulli(0.3): the standard deviation of the frequency is 0.0032; 0.02 is over 6 of them
    assert abs(float((draws < 0.3).mean()) - 0.3) < 0.02


@pytest.mark.parametrize(
    ("clients", "fraction", "count"), [(10, 0.25, 3), (10, 0.2, 2), (7, 1.0, 7), (4, 0.1, 0)]
)
def test_the_number_of_stragglers_is_the_fraction_rounded_half_up(clients, fraction, count):
    assert straggler_count(clients, fraction) == count
    mask = straggler_mask(0, clients, fraction)
    assert (0 if mask is None else int(mask.sum())) == count


def test_stragglers_are_drawn_once_per_seed():
    a, b = straggler_mask(1, 1000, 0.1), straggler_mask(1, 1000, 0.1)
    assert a is not None and b is not None and (a == b).all() and a.sum() == 100
    other = straggler_mask(2, 1000, 0.1)
    assert other is not None and not (other == a).all()
    assert straggler_mask(1, 1000, 0.0) is None
