"""The contract between ``load_federated_data`` and the dataset modules, plus the helpers they share.

A dataset is a function registered in ``DATASETS`` (plain names such as ``digits``) or ``PREFIXED_DATASETS``
(``hf:<name>``, ``parquet:<path>``) that turns a ``DataRequest`` into ``SplitData``: numpy train/test arrays,
optionally natural user ids, and optionally the partitions themselves (the Hugging Face loader partitions inside
flwr-datasets' ``FederatedDataset``). Everything random is drawn from generators derived from the one run seed
through ``DataRequest.rng``/``DataRequest.int_seed``, so the same request gives bit-identical data in any process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.data.partitions import Partitions
from fedsim.registry import Registry

# Independent random streams of the data pipeline (SeedSequence spawn keys under the run seed). The 0xDA7A
# prefix keeps them apart from the engine's streams, which use other tags under the same seed.
_DATA_TAG = 0xDA7A
GENERATE = 0  # drawing a generated dataset (synthetic, MNIST-1D, blobs)
TEST_SPLIT = 1  # holding out the central test set
PARTITION = 2  # shuffling rows and the partitioner's own RNG


@dataclass(frozen=True)
class DataRequest:
    """Everything a dataset loader may use; built once by ``load_federated_data`` from validated input.

    Attributes:
        args: ``data.args`` resolved by the dataset's spec (its own defaults filled in).
        target: the part after the colon for prefixed datasets (``mnist`` in ``hf:mnist``), else ``None``.
        name: the full dataset name, for messages.
        partitioner: ``data.partitioner``.
        partitioner_args: ``data.partitioner_args`` resolved by the partitioner's spec.
        test_fraction: fraction of examples held out as the central test set.
        num_clients: number of logical clients (partitions).
        seed: the run seed (an integer >= 0).
    """

    args: Mapping[str, Any]
    target: str | None
    name: str
    partitioner: str
    partitioner_args: Mapping[str, Any]
    test_fraction: float
    num_clients: int
    seed: int

    def rng(self, stream: int) -> np.random.Generator:
        """A generator for one named stream (``GENERATE``, ``TEST_SPLIT``, ``PARTITION``)."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_DATA_TAG, stream)))

    def int_seed(self, stream: int) -> int:
        """A 32-bit integer seed for one stream, for libraries that take an ``int`` (flwr-datasets, datasets)."""
        return int(np.random.SeedSequence(self.seed, spawn_key=(_DATA_TAG, stream)).generate_state(1)[0])


@dataclass(frozen=True)
class SplitData:
    """A dataset after the central test split, before (or, for ``partitions`` set, after) partitioning.

    Attributes:
        train_x: float32 ``[N, *input_shape]``.
        train_y: int64 ``[N]`` labels in ``[0, num_classes)``.
        test_x: float32 ``[M, *input_shape]``.
        test_y: int64 ``[M]``.
        num_classes: number of classes.
        train_users: natural user id per training example (enables the ``natural`` partitioner), or ``None``.
        partitions: every client's rows of ``train_x``, when the loader partitioned itself.
        task: ``classification`` (int64 labels) or ``regression`` (float32 targets in ``train_y``/``test_y``,
            ``num_classes`` = 1 output).
        source: set by a client-drawn dataset (``data.args.draw: client``): every client's examples on demand.
            ``train_x``/``train_y`` are then empty (``[0, *input_shape]``) and ``partitions``/``train_users``
            unset; ``load_federated_data`` returns a ``LazyFederatedData`` (``fedsim.data.lazy``).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    train_users: np.ndarray | None = None
    partitions: Partitions | None = None
    task: str = "classification"
    source: ClientSource | None = None


@dataclass(frozen=True)
class ClientSource:
    """A client-drawn dataset's training data: each client's examples made on demand, never the population's.

    Attributes:
        sizes: every client's number of training examples (int64 ``[clients]``), known without drawing any.
        draw: ``draw(cid)`` gives client ``cid``'s examples ``(x float32 [n, *shape], y [n])``, the same in any
            process (keyed by the run seed and ``cid``: ``fedsim.randomness.Stream.DATA_CLIENT``). A picklable
            callable (a ``functools.partial`` of a module function).
        partitioners: the ``data.partitioner`` values that describe this layout (a client's examples are its
            own draw, so only the partitioner that would give the same clients fits: ``iid`` for ``blobs``,
            ``natural`` for ``synthetic``).
    """

    sizes: np.ndarray
    draw: Callable[[int], tuple[np.ndarray, np.ndarray]]
    partitioners: tuple[str, ...]


DRAWS = ("population", "client")
"""``data.args.draw`` of the generated datasets that have both modes: ``population`` (the whole population from
one stream, materialised) or ``client`` (each client's examples from its own stream, made on demand)."""


TASKS = ("classification", "regression")
"""What ``SplitData.task`` / ``FederatedData.task`` may say."""

DatasetLoader = Callable[[DataRequest], SplitData]


@dataclass(frozen=True)
class TrainLabels:
    """What partitioning reads of a dataset's training split, drawn without its features (``fedsim.data.sizes``).

    Attributes:
        count: number of training examples (all that ``iid`` reads).
        labels: the training labels in row order, exactly as the loader's ``train_y``, or ``None`` when they
            cannot be had without drawing the features (label-based partitioners then build the data).
        users: natural user id per training example, exactly as the loader's ``train_users`` (``None`` when the
            dataset has none).
        client_sizes: every client's number of examples, set by a client-drawn dataset (``ClientSource.sizes``),
            valid for the ``partitioners`` listed (``count``, ``labels`` and ``users`` are then unused).
        partitioners: the partitioners ``client_sizes`` holds for (``ClientSource.partitioners``).
    """

    count: int
    labels: np.ndarray | None
    users: np.ndarray | None
    client_sizes: np.ndarray | None = None
    partitioners: tuple[str, ...] = ()


TrainLabelsFn = Callable[[DataRequest], TrainLabels]

TRAIN_LABELS: Registry[TrainLabelsFn] = Registry("data.dataset")
"""Datasets whose training split's size (and labels or user ids) can be had cheaply; the rest are built."""

DATASETS: Registry[DatasetLoader] = Registry("data.dataset")
"""Plain dataset names (``digits``, ``mnist1d``, ``synthetic``)."""

PREFIXED_DATASETS: Registry[DatasetLoader] = Registry("data.dataset")
"""Dataset families addressed as ``<prefix>:<target>`` (``hf``, ``parquet``)."""

PREFIX_PLACEHOLDERS = {"hf": "hf:<name>", "parquet": "parquet:<path>"}


def stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into (train, test) with ``round(fraction * n_c)`` test examples of each class.

    Stratifying keeps the central test set's label mix equal to the population's, which a plain random split of a
    small dataset (digits has ~180 examples per class) does only approximately. Both index arrays are sorted.
    """
    test_parts = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        n_test = int(round(fraction * len(members)))
        if fraction > 0 and n_test == len(members):  # keep at least one training example per class
            n_test -= 1
        test_parts.append(rng.permutation(members)[:n_test])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(y)), test)
    return train.astype(np.int64), test.astype(np.int64)
