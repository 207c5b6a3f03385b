"""Federated datasets: load or generate a dataset, hold out a central test set, partition it over clients.

Datasets (``digits``, ``synthetic``, ``mnist1d``, ``hf:<name>``, ``parquet:<path>``) and partitioners (``iid``,
``dirichlet``, ``pathological``, ``shard``, ``natural``) are resolved through one registry each; the engine
calls ``load_federated_data`` with the scenario's ``data`` block and gets a ``FederatedData``.
"""

from fedsim.data.federated import FederatedData, dataset_names, load_federated_data, partitioner_names

# Importing the modules registers their datasets.
from fedsim.data import digits, huggingface, mnist1d, synthetic  # noqa: E402,F401  isort: skip

__all__ = ["FederatedData", "dataset_names", "load_federated_data", "partitioner_names"]
