"""``FederatedData`` and ``load_federated_data``: the one entry point the engine uses to get a run's data.

The server and every worker process call ``load_federated_data`` with the same scenario arguments and get
bit-identical tensors and partitions, because every random choice is drawn from generators derived from the run
seed (see ``fedsim.data.base.DataRequest``). Nothing is shipped between processes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.argspec import ArgSpec, spec_of
from fedsim.data._args import check_number
from fedsim.data.base import (
    DATASETS,
    PARTITION,
    PREFIX_PLACEHOLDERS,
    PREFIXED_DATASETS,
    TASKS,
    ClientSource,
    DataRequest,
    DatasetLoader,
)
from fedsim.data.lazy import ClientCache
from fedsim.data.partitioners import PARTITIONERS, partition_arrays, resolve_partitioner_args
from fedsim.data.partitions import Partitions
from fedsim.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:  # imported where tensors are made: validating a scenario needs none (fedsim.data)
    import torch


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A partitioned dataset: the pooled training set, the central test set and every client's rows.

    The per-client cost is the partition index only (``Partitions``: 8 bytes of offset per client plus 8 per
    example); a client's tensors are gathered when asked for. Any other sequence of index arrays given as
    ``partitions`` is packed into ``Partitions``.

    Attributes:
        train_x: float32 ``[N, *input_shape]``.
        train_y: int64 ``[N]`` labels (classification) or float32 ``[N]`` targets (regression).
        test_x: float32 ``[M, *input_shape]``, the held-out central test set.
        test_y: int64 or float32 ``[M]``, as ``train_y``.
        partitions: one read-only int64 index array into ``train_x`` per logical client (``Partitions``).
        num_classes: number of classes (labels lie in ``[0, num_classes)``); 1 (one output) for regression.
        input_shape: shape of one example, e.g. ``(64,)`` for digits or ``(C, H, W)`` for images.
        task: ``classification`` or ``regression``; when not given it follows ``train_y``'s dtype (float:
            regression), so data read back from the cache keep it.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    partitions: Partitions
    num_classes: int
    input_shape: tuple[int, ...]
    task: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.partitions, Partitions):
            object.__setattr__(self, "partitions", Partitions.from_arrays(self.partitions))
        inferred = "regression" if self.train_y.is_floating_point() else "classification"
        if self.task is None:
            object.__setattr__(self, "task", inferred)
        elif self.task != inferred:
            raise ValueError(f"task {self.task!r} does not fit train_y of dtype {self.train_y.dtype}")

    def client_data(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``cid``'s examples ``(x, y)`` (new tensors; the pooled ones are not shared)."""
        import torch

        # Copy the few indices: torch.from_numpy of the read-only view would share (and warn about) it.
        idx = torch.from_numpy(self.partitions[self._check(cid)].copy())
        return self.train_x[idx], self.train_y[idx]

    def sizes(self) -> np.ndarray:
        """Every client's number of training examples (a new int64 array), as ``LazyFederatedData.sizes``."""
        return self.partitions.sizes()

    def num_examples(self, cid: int) -> int:
        """Number of training examples of client ``cid``."""
        offsets = self.partitions.offsets
        cid = self._check(cid)
        return int(offsets[cid + 1] - offsets[cid])

    def _check(self, cid: int) -> int:
        if not 0 <= cid < len(self.partitions):
            raise IndexError(f"client id {cid} out of range [0, {len(self.partitions)})")
        return cid


@dataclass(frozen=True, eq=False)
class LazyFederatedData:
    """A client-drawn dataset: the central test set and every client's size held, the examples drawn on demand.

    Offers what the engine asks of ``FederatedData`` for a population (``num_examples``, ``client_data``, the
    test set, ``num_classes``, ``input_shape``, ``task``) plus ``cohort``, and the pooled ``train_x``,
    ``train_y`` and ``partitions`` by materialising every client (clients one after another, in id order).

    Attributes:
        test_x, test_y: the central test set (small, materialised).
        source: the clients' sizes and their draw.
        num_classes, input_shape, task: as ``FederatedData``'s.
        cache: the process's drawn clients (shared by copies made with ``dataclasses.replace``).
    """

    test_x: torch.Tensor
    test_y: torch.Tensor
    source: ClientSource
    num_classes: int
    input_shape: tuple[int, ...]
    task: str = "classification"
    cache: ClientCache = field(default_factory=ClientCache, repr=False)

    def __len__(self) -> int:
        return len(self.source.sizes)

    def sizes(self) -> np.ndarray:
        """Every client's number of training examples (a new int64 array)."""
        return np.array(self.source.sizes, dtype=np.int64)

    def num_examples(self, cid: int) -> int:
        """Number of training examples of client ``cid``."""
        return int(self.source.sizes[self._check(cid)])

    def client_arrays(self, cid: int) -> tuple[np.ndarray, np.ndarray]:
        """Client ``cid``'s examples as (read-only, possibly cached) numpy arrays."""
        return self.cache.get(self._check(cid), self.source.draw)

    def client_data(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``cid``'s examples ``(x, y)`` (new tensors)."""
        import torch

        x, y = self.client_arrays(cid)
        return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())

    def cohort(self, cids: Iterable[int]) -> FederatedData:
        """A ``FederatedData`` holding only the examples of ``cids``, addressed by their population ids.

        Its pooled tensors hold the listed clients one after another in id order; ``partitions`` spans the whole
        population (a client outside ``cids`` has no rows there), so ``num_examples``/``partitions[cid]`` of a
        listed client are the population's. Memory: the cohort's examples plus 8 bytes per client of offsets.
        """
        import torch

        members = sorted({self._check(int(c)) for c in cids})
        arrays = [self.client_arrays(c) for c in members]
        counts = np.zeros(len(self), dtype=np.int64)
        counts[members] = [len(y) for _, y in arrays]
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        x = np.empty((total, *self.input_shape), dtype=np.float32)
        y = np.empty(total, dtype=np.float32 if self.task == "regression" else np.int64)
        for (cx, cy), cid in zip(arrays, members, strict=True):
            x[offsets[cid] : offsets[cid + 1]] = cx
            y[offsets[cid] : offsets[cid + 1]] = cy
        return FederatedData(
            train_x=torch.from_numpy(x),
            train_y=torch.from_numpy(y),
            test_x=self.test_x,
            test_y=self.test_y,
            partitions=Partitions(np.arange(total, dtype=np.int64), offsets),
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            task=self.task,
        )

    @functools.cached_property
    def _materialized(self) -> FederatedData:
        return self.cohort(range(len(self)))

    @property
    def train_x(self) -> torch.Tensor:
        """Every client's examples pooled (materialised on first use: the whole population's cost)."""
        return self._materialized.train_x

    @property
    def train_y(self) -> torch.Tensor:
        return self._materialized.train_y

    @property
    def partitions(self) -> Partitions:
        return self._materialized.partitions

    def _check(self, cid: int) -> int:
        if not 0 <= cid < len(self):
            raise IndexError(f"client id {cid} out of range [0, {len(self)})")
        return cid


REGRESSION_PARTITIONERS = ("iid", "natural")
"""Partitioners that do not split by class label, hence usable with a regression target."""


def dataset_names() -> list[str]:
    """Registered plain dataset names (``hf:<name>`` and ``parquet:<path>`` are accepted besides these)."""
    return DATASETS.names()


def partitioner_names() -> list[str]:
    """Registered partitioner names."""
    return PARTITIONERS.names()


def resolve_dataset(name: str) -> tuple[DatasetLoader, str | None]:
    """The loader for ``name`` and, for ``<prefix>:<target>`` names, the target.

    Raises:
        UnknownNameError: listing the plain names and the prefixed forms.
        ConfigError: a prefixed name with an empty target (``hf:``).
    """
    if not isinstance(name, str):
        raise ConfigError("data.dataset", "a dataset name", name)
    if name in DATASETS:
        return DATASETS.get(name), None
    prefix, sep, target = name.partition(":")
    if sep and prefix in PREFIXED_DATASETS:
        if not target:
            raise ConfigError(
                "data.dataset", f"{PREFIX_PLACEHOLDERS.get(prefix, prefix + ':<target>')}", name
            )
        return PREFIXED_DATASETS.get(prefix), target
    known = [
        *DATASETS.names(),
        *(PREFIX_PLACEHOLDERS.get(p, p + ":<target>") for p in PREFIXED_DATASETS.names()),
    ]
    raise UnknownNameError("data.dataset", name, known)


def dataset_spec(name: str) -> ArgSpec:
    """The :class:`ArgSpec` of ``data.args`` for dataset ``name`` (``hf:<name>`` and ``parquet:<path>`` share
    their family's)."""
    loader, _ = resolve_dataset(name)
    return spec_of(loader)


def dataset_task(name: str) -> str:
    """What dataset ``name`` trains: ``classification`` or ``regression`` (declared by its loader)."""
    loader, _ = resolve_dataset(name)
    return str(getattr(loader, "task", "classification"))


def resolve_dataset_args(name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data.args`` checked against dataset ``name``'s spec, with that dataset's own defaults filled in.

    Pure: loads and generates nothing. Raises ``UnknownNameError``/``ConfigError`` naming ``data.args.<key>``.
    """
    owner = f"{name.partition(':')[0]} datasets" if ":" in name else name
    return dataset_spec(name).resolve(args, field="data.args", owner=owner)


def draws_per_client(dataset: str, args: Mapping[str, Any] | None) -> bool:
    """Whether ``dataset`` with ``args`` is client-drawn (``data.args.draw: client``): its clients' examples are
    made on demand (``LazyFederatedData``), never pooled or cached on disk. Pure: loads nothing."""
    return resolve_dataset_args(dataset, args).get("draw") == "client"


def data_request(
    *,
    dataset: str,
    args: Mapping[str, Any],
    partitioner: str,
    partitioner_args: Mapping[str, Any],
    test_fraction: float,
    num_clients: int,
    seed: int,
) -> DataRequest:
    """The validated ``DataRequest`` of ``load_federated_data``'s arguments, resolved against the dataset's and
    partitioner's specs (nothing is loaded).

    Raises:
        ConfigError: any invalid value, naming its dotted scenario field; ``UnknownNameError`` for names.
    """
    check_number("seed", seed, integer=True, low=0)
    check_number("population.clients", num_clients, integer=True, low=1)
    check_number("data.test_fraction", test_fraction, low=0, high=1, high_open=True)
    _, target = resolve_dataset(dataset)
    return DataRequest(
        args=resolve_dataset_args(dataset, args),  # each dataset's own defaults filled in
        target=target,
        name=dataset,
        partitioner=partitioner,
        partitioner_args=resolve_partitioner_args(partitioner, partitioner_args),
        test_fraction=float(test_fraction),
        num_clients=int(num_clients),
        seed=int(seed),
    )


def load_federated_data(
    *,
    dataset: str,
    args: Mapping[str, Any],
    partitioner: str,
    partitioner_args: Mapping[str, Any],
    test_fraction: float,
    num_clients: int,
    seed: int,
) -> FederatedData | LazyFederatedData:
    """Load (or generate) ``dataset``, hold out the central test set and partition the rest over the clients.

    Deterministic: the same arguments give bit-identical tensors and partitions in any process. A client-drawn
    dataset (``data.args.draw: client``) gives a ``LazyFederatedData``: the test set and the clients' sizes, each
    client's examples drawn when asked for.

    Args:
        dataset: ``data.dataset`` (``digits``, ``synthetic``, ``mnist1d``, ``blobs``, ``hf:<name>``,
            ``parquet:<path>``).
        args: ``data.args`` for the dataset.
        partitioner: ``data.partitioner`` (``iid``, ``dirichlet``, ``pathological``, ``shard``, ``natural``).
        partitioner_args: ``data.partitioner_args``.
        test_fraction: ``data.test_fraction`` in [0, 1) (ignored when a dataset has its own test split).
        num_clients: ``population.clients``.
        seed: the run seed.

    Raises:
        ConfigError: any invalid value, naming its dotted scenario field; ``UnknownNameError`` for names.
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
    loader, _ = resolve_dataset(dataset)
    split = loader(request)
    if split.task not in TASKS:
        raise ValueError(f"dataset {dataset!r} returned task {split.task!r}; expected one of {TASKS}")
    regression = split.task == "regression"
    if regression and partitioner not in REGRESSION_PARTITIONERS:
        raise ConfigError(
            "data.partitioner",
            f"one of {', '.join(REGRESSION_PARTITIONERS)} for the regression dataset {dataset!r} "
            "(the others split by class label)",
            partitioner,
        )
    if split.source is not None:
        return _client_drawn(split, dataset, partitioner, regression)
    partitions = split.partitions
    if partitions is None:
        partitions = partition_arrays(
            split.train_y,
            split.train_users,
            name=partitioner,
            values=request.partitioner_args,
            num_clients=request.num_clients,
            rng=request.rng(PARTITION),
            dataset=dataset,
        )
    import torch

    y_dtype = np.float32 if regression else np.int64
    return FederatedData(
        train_x=torch.from_numpy(np.ascontiguousarray(split.train_x, dtype=np.float32)),
        train_y=torch.from_numpy(np.ascontiguousarray(split.train_y, dtype=y_dtype)),
        **_test_tensors(split, y_dtype),
        partitions=partitions,
        num_classes=int(split.num_classes),
        input_shape=tuple(int(d) for d in split.train_x.shape[1:]),
        task=split.task,
    )


def _test_tensors(split: Any, y_dtype: Any) -> dict[str, Any]:
    """The central test set of a split as contiguous tensors (features float32, targets ``y_dtype``)."""
    import torch

    return {
        "test_x": torch.from_numpy(np.ascontiguousarray(split.test_x, dtype=np.float32)),
        "test_y": torch.from_numpy(np.ascontiguousarray(split.test_y, dtype=y_dtype)),
    }


def _client_drawn(split: Any, dataset: str, partitioner: str, regression: bool) -> LazyFederatedData:
    """The ``LazyFederatedData`` of a client-drawn split, refusing a partitioner that does not describe it."""
    source = split.source
    if partitioner not in source.partitioners:
        raise ConfigError(
            "data.partitioner",
            f"{' or '.join(source.partitioners)} for {dataset} with draw: client (each client's examples are its "
            "own draw)",
            partitioner,
        )

    y_dtype = np.float32 if regression else np.int64
    return LazyFederatedData(
        **_test_tensors(split, y_dtype),
        source=source,
        num_classes=int(split.num_classes),
        input_shape=tuple(int(d) for d in split.train_x.shape[1:]),
        task=split.task,
    )
