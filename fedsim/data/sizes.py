"""Every client's number of training examples, without building the examples where that is cheap.

Why this module exists: the privacy of sample-level DP depends on each client's dataset size (its sampling rate
and number of steps), and ``fedsim privacy`` must say it from the scenario alone, in seconds. Partitioners read
only the training labels (and natural user ids), never the features; ``iid`` reads only the number of rows.
Datasets that can give those without drawing their features register a function in ``TRAIN_LABELS``
(``fedsim.data.base``): synthetic (example counts and user ids are the generator's first draws), blobs (labels
come before the features), mnist1d and regression (the number of rows is known from the arguments). The sizes
are then the very partitioner's on those labels, seeded as in ``load_federated_data``; any other combination
builds the data (the caller may pass its cached build). ``tests/data/test_sizes.py`` checks the equality with
the full build over every dataset and partitioner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedsim.data.base import PARTITION, TRAIN_LABELS
from fedsim.data.federated import data_request
from fedsim.data.partitioners import partition_arrays

LABEL_FREE_PARTITIONERS = ("iid", "natural")
"""Partitioners that read no label: the row count (``iid``) or the natural user ids (``natural``)."""


def cheap_client_sizes(
    *,
    dataset: str,
    args: Mapping[str, Any],
    partitioner: str,
    partitioner_args: Mapping[str, Any],
    test_fraction: float,
    num_clients: int,
    seed: int,
) -> np.ndarray | None:
    """Every client's number of training examples without the features, or ``None`` where the partition needs
    data this dataset can only give by building it. Same arguments as ``load_federated_data``.

    Raises:
        ConfigError: as ``load_federated_data`` for the same arguments (invalid values, a partition that leaves a
            client without examples).
    """
    request = data_request(
        dataset=dataset,
        args=args,
        partitioner=partitioner,
        partitioner_args=partitioner_args,
        test_fraction=test_fraction,
        num_clients=num_clients,
        seed=seed,
    )
    if dataset not in TRAIN_LABELS:
        return None
    known = TRAIN_LABELS.get(dataset)(request)
    if known.client_sizes is not None:  # client-drawn: the sizes are the dataset's own
        # another partitioner is refused by load_federated_data, which the caller's build then raises
        return np.array(known.client_sizes, dtype=np.int64) if partitioner in known.partitioners else None
    labels = known.labels
    if labels is None:
        if partitioner not in LABEL_FREE_PARTITIONERS:
            return None
        labels = np.zeros(known.count, dtype=np.int64)  # read by no label-free partitioner
    parts = partition_arrays(
        labels,
        known.users,
        name=partitioner,
        values=request.partitioner_args,
        num_clients=request.num_clients,
        rng=request.rng(PARTITION),
        dataset=dataset,
    )
    return parts.sizes()


def client_sizes(scenario: Any, build: Callable[[], Any] | None = None) -> np.ndarray:
    """Every client's number of training examples for a scenario: ``cheap_client_sizes`` of its ``data`` block,
    else those of ``build()`` (a ``FederatedData``; default: ``load_federated_data`` here)."""
    d = scenario.data
    kwargs = dict(
        dataset=d.dataset,
        args=d.args,
        partitioner=d.partitioner,
        partitioner_args=d.partitioner_args,
        test_fraction=d.test_fraction,
        num_clients=scenario.population.clients,
        seed=scenario.seed,
    )
    sizes = cheap_client_sizes(**kwargs)
    if sizes is not None:
        return sizes
    if build is None:
        from fedsim.data.federated import load_federated_data

        data = load_federated_data(**kwargs)
    else:
        data = build()
    return data.sizes()  # a client-drawn dataset knows its sizes without materialising a client
