"""Partitions: sizes, coverage, determinism (also across processes) and the label skew each partitioner promises."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import label_counts, load, mean_max_share

from fedsim.data import FederatedData, dataset_names, partitioner_names

DIGITS_TOTAL = 1797  # sklearn's load_digits


def _assert_disjoint(data: FederatedData) -> np.ndarray:
    every = np.concatenate(data.partitions)
    assert len(np.unique(every)) == len(every), "a training example is in two partitions"
    assert every.min() >= 0 and every.max() < len(data.train_y)
    return every


def test_registries_list_the_documented_names():
    assert dataset_names() == ["blobs", "diabetes", "digits", "mnist1d", "regression", "synthetic"]
    assert partitioner_names() == ["dirichlet", "iid", "natural", "pathological", "shard"]


def test_digits_shapes_dtypes_and_stratified_test_split():
    data = load()
    assert data.train_x.dtype == torch.float32 and data.test_x.dtype == torch.float32
    assert data.train_y.dtype == torch.int64 and data.test_y.dtype == torch.int64
    assert data.input_shape == (64,) and data.num_classes == 10
    assert len(data.train_y) + len(data.test_y) == DIGITS_TOTAL
    assert 0.0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1.0
    # stratified: each class contributes round(0.2 * n_c) test examples (class sizes 174..183 -> 35..37)
    test_counts = torch.bincount(data.test_y, minlength=10)
    assert int(test_counts.min()) >= 35 and int(test_counts.max()) <= 37


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_and_cover_the_train_set(partitioner):
    data = load(partitioner=partitioner, num_clients=20)
    assert len(data.partitions) == 20
    every = _assert_disjoint(data)
    assert len(every) == len(data.train_y)  # exact cover
    assert all(p.dtype == np.int64 for p in data.partitions)
    assert min(data.num_examples(c) for c in range(20)) >= 1


def test_iid_sizes_differ_by_at_most_one():
    data = load(num_clients=7)
    sizes = [data.num_examples(c) for c in range(7)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(data.train_y)


def test_client_data_is_the_indexed_rows():
    data = load(partitioner="dirichlet", num_clients=5)
    x, y = data.client_data(3)
    idx = torch.from_numpy(np.array(data.partitions[3]))
    assert torch.equal(x, data.train_x[idx]) and torch.equal(y, data.train_y[idx])
    assert data.num_examples(3) == len(y)
    with pytest.raises(IndexError):
        data.client_data(5)


def test_partitions_are_read_only():
    data = load()
    with pytest.raises(ValueError):
        data.partitions[0][0] = 1


def _same(a: FederatedData, b: FederatedData) -> bool:
    tensors = all(
        torch.equal(getattr(a, f), getattr(b, f)) for f in ("train_x", "train_y", "test_x", "test_y")
    )
    parts = len(a.partitions) == len(b.partitions) and all(
        np.array_equal(p, q) for p, q in zip(a.partitions, b.partitions, strict=True)
    )
    return tensors and parts


@pytest.mark.parametrize(
    "overrides",
    [
        {"partitioner": "dirichlet", "partitioner_args": {"alpha": 0.3}},
        {"partitioner": "shard", "num_clients": 30},
        {"dataset": "synthetic", "partitioner": "natural"},
    ],
)
def test_deterministic_and_seed_sensitive(overrides):
    first, again = load(**overrides), load(**overrides)
    assert _same(first, again)
    other = load(**{**overrides, "seed": 1})
    assert not any(np.array_equal(p, q) for p, q in zip(first.partitions, other.partitions, strict=True))


_DIGEST_SCRIPT = """
import hashlib, json, sys
import numpy as np
from fedsim.data import load_federated_data

def digest(d):
    h = hashlib.sha256()
    for t in (d.train_x, d.train_y, d.test_x, d.test_y):
        h.update(t.numpy().tobytes())
    for p in d.partitions:
        h.update(np.asarray(p).tobytes())
    return h.hexdigest()

print(json.dumps([digest(load_federated_data(**kw)) for kw in json.loads(sys.argv[1])]))
"""

_CASES = [
    {"dataset": "digits", "partitioner": "dirichlet", "partitioner_args": {"alpha": 0.5}, "num_clients": 50},
    {"dataset": "synthetic", "partitioner": "natural", "num_clients": 20},
    {"dataset": "mnist1d", "args": {"num_samples": 1000}, "partitioner": "pathological", "num_clients": 20},
]


def _digest(data: FederatedData) -> str:
    h = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        h.update(t.numpy().tobytes())
    for p in data.partitions:
        h.update(np.asarray(p).tobytes())
    return h.hexdigest()


def test_bit_identical_in_another_process():
    """Workers rebuild the data from the scenario: a fresh interpreter must produce the same bytes."""
    cases = [{"args": {}, "partitioner_args": {}, "test_fraction": 0.2, "seed": 7, **case} for case in _CASES]
    here = [_digest(load(**kw)) for kw in cases]
    out = subprocess.run(
        [sys.executable, "-c", _DIGEST_SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={
            **os.environ,
            "FLWR_TELEMETRY_ENABLED": "0",
            "HF_DATASETS_OFFLINE": "1",
            "PYTHONHASHSEED": "123",
        },
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_dirichlet_label_skew_grows_as_alpha_shrinks():
    """Oracle: the iid partition of the same data, measured in the same test (mean largest-class share)."""
    iid = mean_max_share(load(num_clients=10))
    flat = mean_max_share(load(partitioner="dirichlet", partitioner_args={"alpha": 100.0}, num_clients=10))
    skewed = mean_max_share(load(partitioner="dirichlet", partitioner_args={"alpha": 0.1}, num_clients=10))
    # iid on 10 balanced classes: ~0.13; Dir(0.1) concentrates each class on ~1-2 clients: ~0.5-0.7.
    assert iid < 0.2
    assert abs(flat - iid) < 0.05
    assert skewed > iid + 0.25


def test_dirichlet_default_min_size_works_for_100_clients_on_digits():
    """The documented use: 100 clients, alpha 0.5, ~1440 training rows; every client gets >= 1 example."""
    for seed in range(5):
        data = load(partitioner="dirichlet", partitioner_args={"alpha": 0.5}, num_clients=100, seed=seed)
        assert len(data.partitions) == 100
        assert min(data.num_examples(c) for c in range(100)) >= 1
        assert len(_assert_disjoint(data)) == len(data.train_y)


def test_pathological_limits_classes_per_client_and_uses_every_class():
    data = load(partitioner="pathological", partitioner_args={"num_classes_per_partition": 2}, num_clients=20)
    counts = label_counts(data)
    assert all(sum(1 for n in c if n > 0) <= 2 for c in counts)
    assert all(sum(c[k] for c in counts) > 0 for k in range(10))  # first-deterministic: no class is dropped


def test_shard_gives_equal_label_sorted_shards():
    data = load(partitioner="shard", partitioner_args={"num_shards_per_partition": 2}, num_clients=20)
    shard_size = len(data.train_y) // 40
    assert all(data.num_examples(c) == 2 * shard_size for c in range(20))
    _assert_disjoint(data)
    # a shard of consecutive label-sorted rows spans at most 2 classes, so a client holds at most 4
    assert all(sum(1 for n in c if n > 0) <= 4 for c in label_counts(data))


def test_natural_partition_is_one_user_per_client():
    data = load(dataset="synthetic", partitioner="natural", num_clients=12)
    assert len(data.partitions) == 12
    assert len(_assert_disjoint(data)) == len(data.train_y)
