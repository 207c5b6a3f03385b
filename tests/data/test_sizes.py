"""``fedsim.data.sizes``: every client's number of training examples without the features equals what the full
build partitions, for every dataset and partitioner of the registries (oracle: ``load_federated_data``)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fedsim.data import dataset_names, load_federated_data, partitioner_names
from fedsim.data.base import DATASETS
from fedsim.data.sizes import cheap_client_sizes
from fedsim.errors import ConfigError

TINY = {
    "digits": {},
    "diabetes": {},
    "synthetic": {"dim": 5, "samples": {"mean": 1.0, "sigma": 1.0, "min": 5, "max": 60}},
    "mnist1d": {"num_samples": 300},
    "blobs": {"shape": [3], "samples_per_client": 30, "test_samples": 10},
    "regression": {"n": 300, "d": 2},
}
CHEAP = {
    ("synthetic", "iid"),
    ("synthetic", "natural"),
    ("blobs", "iid"),
    ("blobs", "dirichlet"),
    ("blobs", "pathological"),
    ("blobs", "shard"),
    ("mnist1d", "iid"),
    ("regression", "iid"),
}
"""Where no example is drawn (the rest build the data: labels that need the features, or small file-backed sets)."""


def test_every_registered_dataset_has_tiny_settings_here():
    assert sorted(TINY) == dataset_names()


@pytest.mark.parametrize("partitioner", partitioner_names())
@pytest.mark.parametrize("dataset", dataset_names())
@pytest.mark.parametrize("seed", [0, 7])
def test_sizes_without_features_equal_the_full_build(dataset, partitioner, seed, monkeypatch):
    kwargs = dict(
        dataset=dataset,
        args=TINY[dataset],
        partitioner=partitioner,
        partitioner_args={},
        test_fraction=0.2,
        num_clients=6,
        seed=seed,
    )
    try:
        full = load_federated_data(**kwargs).partitions.sizes()
    except ConfigError as exc:  # e.g. natural without user ids: the cheap path must refuse it alike
        error = str(exc)
        full = None
    calls = []
    loader = DATASETS.get(dataset)

    @functools.wraps(loader)  # keeps the dataset's declared argument spec
    def spy(request):
        calls.append(1)
        return loader(request)

    monkeypatch.setitem(DATASETS._items, dataset, spy)
    if full is None:
        try:
            sizes = cheap_client_sizes(**kwargs)
        except ConfigError as exc:
            assert str(exc) == error
        else:
            assert sizes is None  # the caller builds the data then, which raises that error
        return
    sizes = cheap_client_sizes(**kwargs)
    assert calls == []  # the dataset's examples were never built
    if (dataset, partitioner) in CHEAP:
        assert sizes is not None and sizes.dtype == np.int64
        assert sizes.tolist() == full.tolist()
    else:
        assert sizes is None


def test_prefixed_datasets_are_built():
    kwargs = dict(args={}, partitioner="iid", partitioner_args={}, test_fraction=0.2, num_clients=2, seed=0)
    assert cheap_client_sizes(dataset="parquet:/nonexistent.parquet", **kwargs) is None
    assert cheap_client_sizes(dataset="hf:mnist", **kwargs) is None


def test_bad_settings_are_refused_as_by_the_build():
    kwargs = dict(partitioner="iid", partitioner_args={}, test_fraction=0.2, num_clients=2, seed=0)
    for dataset, args in (
        ("synthetic", {"dim": 0}),
        ("blobs", {"noise": -1}),
        ("mnist1d", {"num_samples": 3}),
    ):
        with pytest.raises(ConfigError) as built:
            load_federated_data(dataset=dataset, args=args, **kwargs)
        with pytest.raises(ConfigError) as cheap:
            cheap_client_sizes(dataset=dataset, args=args, **kwargs)
        assert str(cheap.value) == str(built.value)
