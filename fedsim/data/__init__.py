"""Federated datasets: load or generate a dataset, hold out a central test set, partition it over clients.

Datasets (``digits``, ``synthetic``, ``mnist1d``, ``blobs``, ``diabetes``, ``regression``, ``hf:<name>``,
``parquet:<path>``) and partitioners (``iid``, ``dirichlet``, ``pathological``, ``shard``, ``natural``) are
resolved through one registry each; the engine calls ``load_federated_data`` with the scenario's ``data`` block and gets a ``FederatedData``.
``datasets``, ``flwr_datasets`` and ``pyarrow`` are imported only by the loaders and partitioners that need them,
and torch only where tensors are made: the registries (names, ``ArgSpec``s, defaults) import without it, so that
validating a scenario (``fedsim privacy``, ``fedsim validate``) does not pay torch's seconds of start-up
(``tests/privacy/test_light_imports.py``).
"""

from fedsim.data.federated import (
    FederatedData,
    LazyFederatedData,
    dataset_names,
    draws_per_client,
    load_federated_data,
    partitioner_names,
)
from fedsim.data.partitions import Partitions

# Importing the modules registers their datasets.
from fedsim.data import blobs, digits, huggingface, mnist1d, regression, synthetic  # noqa: E402,F401  isort: skip

__all__ = [
    "FederatedData",
    "LazyFederatedData",
    "Partitions",
    "dataset_names",
    "draws_per_client",
    "load_federated_data",
    "partitioner_names",
]
