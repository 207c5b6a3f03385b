"""``Partitions`` (the CSR partition index) and the closed-form ``iid`` path, checked against flwr-datasets."""

from __future__ import annotations

import pickle

import datasets
import hypothesis.strategies as st
import numpy as np
import pytest
from flwr_datasets.partitioner import IidPartitioner
from hypothesis import given, settings

from fedsim.data import Partitions
from fedsim.data.partitioners import INDEX, LABEL, iid_offsets, partition_arrays

_sizes = st.lists(st.integers(0, 5), max_size=12)


def _arrays(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    rows = np.random.default_rng(seed).permutation(max(1, sum(sizes)))
    bounds = np.cumsum([0, *sizes])
    return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@settings(max_examples=100, deadline=None)
@given(_sizes)
def test_behaves_as_the_tuple_of_arrays_it_packs(sizes):
    """Oracle: the tuple of per-client arrays that ``FederatedData.partitions`` used to be."""
    arrays = _arrays(sizes)
    p = Partitions.from_arrays(arrays)
    assert len(p) == len(arrays)
    assert all(np.array_equal(a, b) for a, b in zip(p, arrays, strict=True))
    assert all(np.array_equal(p[c], arrays[c]) and p[c].dtype == np.int64 for c in range(len(p)))
    assert p.sizes().tolist() == sizes
    if sizes:
        assert np.array_equal(np.concatenate(list(p)), np.concatenate(arrays))
    assert p.nbytes == 8 * (sum(sizes) + len(sizes) + 1)


def test_views_are_read_only_and_the_callers_array_is_not_touched():
    rows = np.arange(6)
    p = Partitions(rows, [0, 2, 2, 6])
    for view in (p[0], p[2], p.indices, p.offsets):
        with pytest.raises(ValueError):
            view[0] = 1
    assert rows.flags.writeable  # copied, not frozen in place
    rows[0] = 99
    assert p[0].tolist() == [0, 1]


def test_sequence_indexing_like_a_tuple():
    p = Partitions(np.arange(5), [0, 1, 3, 5])
    assert p[-1].tolist() == [3, 4] and p[np.int64(1)].tolist() == [1, 2]
    assert [a.tolist() for a in p[1:]] == [[1, 2], [3, 4]]
    with pytest.raises(IndexError):
        p[3]
    with pytest.raises(IndexError):
        p[-4]
    with pytest.raises(TypeError):
        p[1.0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("indices", "offsets"),
    [
        (np.arange(4), [0, 2, 3]),  # does not end at len(indices)
        (np.arange(4), [1, 2, 4]),  # does not start at 0
        (np.arange(4), [0, 3, 2, 4]),  # decreasing
        (np.arange(4), []),  # no end offset
        (np.arange(4).reshape(2, 2), [0, 4]),  # not flat
    ],
)
def test_inconsistent_offsets_are_refused(indices, offsets):
    with pytest.raises(ValueError, match="Partitions"):
        Partitions(indices, offsets)


def test_pickle_round_trip_stays_read_only():
    p = Partitions.from_arrays(_arrays([3, 1, 4]))
    q = pickle.loads(pickle.dumps(p))
    assert np.array_equal(q.indices, p.indices) and np.array_equal(q.offsets, p.offsets)
    with pytest.raises(ValueError):
        q[0][0] = 1


def _flwr_iid(order: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """flwr-datasets' own IidPartitioner over the rows in ``order`` (one ``Dataset.shard`` per client)."""
    partitioner = IidPartitioner(num_partitions=num_clients)
    partitioner.dataset = datasets.Dataset.from_dict({INDEX: order, LABEL: np.zeros(len(order), np.int64)})
    return [np.asarray(partitioner.load_partition(c)[INDEX]) for c in range(num_clients)]


@pytest.mark.parametrize(
    ("n", "k"), [(10, 1), (10, 10), (10, 3), (17, 5), (100, 7), (1437, 100), (1000, 999), (64, 16)]
)
def test_iid_offsets_are_flwr_iid_shards(n, k):
    """Oracle: flwr-datasets' IidPartitioner (``Dataset.shard(..., contiguous=True)``), including N % n != 0."""
    order = np.random.default_rng(n * k).permutation(n)
    fast = Partitions(order, iid_offsets(n, k))
    flwr = _flwr_iid(order, k)
    assert len(fast) == k
    assert all(np.array_equal(a, b) for a, b in zip(fast, flwr, strict=True))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60).flatmap(lambda k: st.tuples(st.integers(k, 200), st.just(k))))
def test_iid_offsets_match_flwr_for_any_size(nk):
    n, k = nk
    expected = np.cumsum([0, *(len(p) for p in _flwr_iid(np.arange(n), k))])
    assert np.array_equal(iid_offsets(n, k), expected)


def test_in_memory_iid_path_equals_the_flwr_path():
    """``partition_arrays`` cuts its seeded permutation itself; flwr's IidPartitioner on that permutation agrees."""
    labels = np.arange(103) % 4
    fast = partition_arrays(
        labels, None, name="iid", values={}, num_clients=9, rng=np.random.default_rng(5), dataset="toy"
    )
    order = np.random.default_rng(5).permutation(len(labels))  # the same first draw
    assert all(np.array_equal(a, b) for a, b in zip(fast, _flwr_iid(order, 9), strict=True))
