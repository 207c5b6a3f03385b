"""Partitioners by name: thin, validated factories over flwr-datasets' partitioners.

Every dataset is partitioned the same way: a ``datasets.Dataset`` carrying an index column (the row of
``train_x``), the label and, when the data has one, the natural user id is handed to a flwr-datasets
``Partitioner``; each client's partition is read back as its index column. In-memory datasets go through
``partition_arrays``; Hugging Face / parquet data go through ``FederatedDataset`` with the same ``build_partitioner``.

``iid`` is the exception on the read side: flwr's ``IidPartitioner`` cuts the (shuffled) rows into contiguous
shards, which ``iid_offsets`` computes in closed form, so a population of 10^6 clients costs one numpy call rather
than 10^6 ``Dataset.shard`` calls, and in-memory data need neither ``datasets`` nor ``flwr_datasets`` (both are
imported only where a flwr partitioner is built).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.argspec import ArgSpec, choice, declares, flag, num, spec_of
from fedsim.data.partitions import Partitions
from fedsim.errors import ConfigError
from fedsim.registry import Registry

if TYPE_CHECKING:
    import datasets
    from flwr_datasets.partitioner import Partitioner

INDEX = "__fedsim_index__"
LABEL = "label"
USER = "__fedsim_user__"
FIELD = "data.partitioner_args"


@dataclass(frozen=True)
class PartitionContext:
    """What a partitioner factory knows about the data it will split.

    Attributes:
        num_clients: number of partitions to make.
        num_examples: number of training examples.
        seed: integer seed for the partitioner's own generator.
        label_column: column holding the label.
        user_column: column holding the natural user id, or ``None`` when the dataset has none.
        dataset: the dataset name, for messages.
    """

    num_clients: int
    num_examples: int
    seed: int
    label_column: str = LABEL
    user_column: str | None = None
    dataset: str = ""


PartitionerFactory = Callable[[Mapping[str, Any], PartitionContext], "Partitioner"]

PARTITIONERS: Registry[PartitionerFactory] = Registry("data.partitioner")


def resolve_partitioner_args(name: str, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data.partitioner_args`` checked against partitioner ``name``'s spec, its own defaults filled in.

    Pure: builds nothing. Raises ``UnknownNameError`` for an unknown name, ``ConfigError`` for a bad argument.
    """
    return spec_of(PARTITIONERS.get(name)).resolve(values, field=FIELD, owner=name)


@PARTITIONERS.register("iid")
@declares(ArgSpec())
def iid(values: Mapping[str, Any], ctx: PartitionContext) -> Partitioner:
    """Equal contiguous shards of the (seeded-shuffled) rows: clients differ only by sampling noise.

    References:
        McMahan, B. et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
        AISTATS 2017, arXiv:1602.05629 (the IID baseline).
    """
    resolve_partitioner_args("iid", values)
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=ctx.num_clients)


def iid_offsets(num_examples: int, num_clients: int) -> np.ndarray:
    """Where flwr's ``IidPartitioner`` cuts ``num_examples`` rows into ``num_clients`` contiguous shards.

    ``IidPartitioner`` calls ``Dataset.shard(num_clients, i, contiguous=True)``: with ``div, mod =
    divmod(N, n)``, shard i starts at ``div * i + min(i, mod)`` and holds ``div + (i < mod)`` rows.
    """
    div, mod = divmod(num_examples, num_clients)
    starts = np.arange(num_clients + 1, dtype=np.int64)
    return starts * div + np.minimum(starts, mod)


def default_min_partition_size(num_examples: int, num_clients: int) -> int:
    """flwr-datasets' default of 10, cut to a tenth of the mean partition size when data are scarce (>= 1).

    Measured on digits (1437 training rows, seeds 0..49): 100 clients at alpha 0.3 or 0.5 (default 1) and 20
    clients at alpha 0.1 (default 7) always succeed; flwr's fixed 10 fails every time at 100 clients, alpha 0.5.
    """
    return int(min(10, max(1, num_examples // (10 * num_clients))))


@PARTITIONERS.register("dirichlet")
@declares(
    ArgSpec(
        (
            num("alpha", 0.5, low=0, low_open=True),
            num(
                "min_partition_size",
                None,
                integer=True,
                low=1,
                default_doc="min(10, max(1, examples // (10 * clients)))",
            ),
            flag("self_balancing", False),
            flag("shuffle", True),
        )
    )
)
def dirichlet(values: Mapping[str, Any], ctx: PartitionContext) -> Partitioner:
    """Label skew: each class is split over the clients by proportions drawn from Dir(alpha).

    ``partitioner_args``: ``alpha`` (0.5; smaller is more skewed), ``min_partition_size``
    (``default_min_partition_size``), ``self_balancing`` (false), ``shuffle`` (true).

    References:
        Yurochkin, M. et al., "Bayesian Nonparametric Federated Learning of Neural Networks", ICML 2019,
        arXiv:1905.12022. Hsu, T.-M. H., Qi, H. and Brown, M., "Measuring the Effects of Non-Identical Data
        Distribution for Federated Visual Classification", arXiv:1909.06335, 2019.
    """
    args = resolve_partitioner_args("dirichlet", values)
    from flwr_datasets.partitioner import DirichletPartitioner

    min_size = args["min_partition_size"]
    return DirichletPartitioner(
        num_partitions=ctx.num_clients,
        partition_by=ctx.label_column,
        alpha=float(args["alpha"]),
        min_partition_size=(
            default_min_partition_size(ctx.num_examples, ctx.num_clients) if min_size is None else min_size
        ),
        self_balancing=args["self_balancing"],
        shuffle=args["shuffle"],
        seed=ctx.seed,
    )


@PARTITIONERS.register("pathological")
@declares(
    ArgSpec(
        (
            num("num_classes_per_partition", 2, integer=True, low=1),
            choice(
                "class_assignment_mode",
                "first-deterministic",
                ("random", "deterministic", "first-deterministic"),
            ),
            flag("shuffle", True),
        )
    )
)
def pathological(values: Mapping[str, Any], ctx: PartitionContext) -> Partitioner:
    """Each client holds examples of only ``num_classes_per_partition`` classes (default 2).

    ``class_assignment_mode`` defaults to ``first-deterministic`` (client i surely gets class i mod C, the rest
    at random), so every class is used whenever there are at least as many clients as classes; flwr's
    ``random`` can leave classes unused. ``shuffle`` (true).

    References:
        McMahan, B. et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
        AISTATS 2017, arXiv:1602.05629 (the pathological non-IID split).
    """
    args = resolve_partitioner_args("pathological", values)
    from flwr_datasets.partitioner import PathologicalPartitioner

    return PathologicalPartitioner(
        num_partitions=ctx.num_clients,
        partition_by=ctx.label_column,
        num_classes_per_partition=args["num_classes_per_partition"],
        class_assignment_mode=args["class_assignment_mode"],
        shuffle=args["shuffle"],
        seed=ctx.seed,
    )


@PARTITIONERS.register("shard")
@declares(
    ArgSpec(
        (
            num(
                "num_shards_per_partition",
                None,
                integer=True,
                low=1,
                default_doc="2 when shard_size is not given",
            ),
            num("shard_size", None, integer=True, low=1, default_doc="derived from the other settings"),
            flag("keep_incomplete_shard", False),
            flag("shuffle", True),
        )
    )
)
def shard(values: Mapping[str, Any], ctx: PartitionContext) -> Partitioner:
    """Rows sorted by label, cut into equal shards, ``num_shards_per_partition`` shards per client.

    ``partitioner_args``: ``num_shards_per_partition`` (2 when ``shard_size`` is not given, as in McMahan et
    al.), ``shard_size`` (derived when absent), ``keep_incomplete_shard`` (false), ``shuffle`` (true).

    References:
        McMahan, B. et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
        AISTATS 2017, arXiv:1602.05629 (200 shards of 300 examples, 2 per client).
    """
    args = resolve_partitioner_args("shard", values)
    shard_size, per_client = args["shard_size"], args["num_shards_per_partition"]
    if per_client is None and shard_size is None:
        per_client = 2
    from flwr_datasets.partitioner import ShardPartitioner

    return ShardPartitioner(
        num_partitions=ctx.num_clients,
        partition_by=ctx.label_column,
        num_shards_per_partition=per_client,
        shard_size=shard_size,
        keep_incomplete_shard=args["keep_incomplete_shard"],
        shuffle=args["shuffle"],
        seed=ctx.seed,
    )


@PARTITIONERS.register("natural")
@declares(ArgSpec())
def natural(values: Mapping[str, Any], ctx: PartitionContext) -> Partitioner:
    """One client per natural user id of the dataset (e.g. the users of ``synthetic``); takes no arguments.

    References:
        Caldas, S. et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, 2018.
    """
    resolve_partitioner_args("natural", values)
    if ctx.user_column is None:
        raise ConfigError(
            "data.partitioner",
            f"a partitioner other than natural for dataset {ctx.dataset} (it has no user ids)",
            "natural",
        )
    from flwr_datasets.partitioner import NaturalIdPartitioner

    return NaturalIdPartitioner(partition_by=ctx.user_column)


def build_partitioner(name: str, values: Mapping[str, Any] | None, ctx: PartitionContext) -> Partitioner:
    """Resolve ``data.partitioner`` and build it from validated ``data.partitioner_args``."""
    factory = PARTITIONERS.get(name)
    try:
        return factory(values or {}, ctx)
    except ImportError as exc:  # the benchmark machines carry no flwr-datasets; iid does not need it
        raise ConfigError(
            "data.partitioner", f"iid where flwr-datasets cannot be imported ({exc.name} is missing)", name
        ) from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise _invalid(name, ctx, exc, values) from None


def check_enough_examples(ctx: PartitionContext) -> None:
    """Every client must be able to hold at least one example."""
    if ctx.num_clients > ctx.num_examples:
        raise ConfigError(
            "population.clients",
            f"at most the number of training examples of {ctx.dataset} ({ctx.num_examples}), so that every "
            "client gets one",
            ctx.num_clients,
        )


def read_partitions(partitioner: Partitioner, name: str, values: Any, ctx: PartitionContext) -> Partitions:
    """Run an assigned partitioner and return each client's read-only int64 row indices (partitioner order).

    ``iid`` is read as contiguous shards of the index column (``iid_offsets``), which is what
    ``IidPartitioner.load_partition`` returns, without one ``Dataset`` per client.

    Raises:
        ConfigError: the partitioner cannot make ``ctx.num_clients`` partitions, or some client would get no
            example (every client must hold at least one).
    """
    check_enough_examples(ctx)
    try:
        with warnings.catch_warnings():
            # Dirichlet resampling and unused-class notices; a failure is reported as a ConfigError below.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)  # pyarrow sort options inside ShardPartitioner
            count = partitioner.num_partitions
            if count != ctx.num_clients:
                raise ConfigError(
                    "population.clients",
                    f"the number of distinct user ids of {ctx.dataset} ({count}) for partitioner natural",
                    ctx.num_clients,
                )
            if name == "iid":
                rows = column(partitioner.dataset, INDEX)
                parts = Partitions(rows, iid_offsets(len(rows), ctx.num_clients))
            else:
                parts = Partitions.from_arrays(
                    column(partitioner.load_partition(cid), INDEX) for cid in range(ctx.num_clients)
                )
    except (ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise _invalid(name, ctx, exc, values) from None
    _check_none_empty(parts, name, values, ctx)
    return parts


def partition_arrays(
    labels: np.ndarray,
    users: np.ndarray | None,
    *,
    name: str,
    values: Mapping[str, Any] | None,
    num_clients: int,
    rng: np.random.Generator,
    dataset: str,
) -> Partitions:
    """Partition in-memory training data given its labels (and natural user ids, if any).

    The rows are first permuted with ``rng`` (as ``FederatedDataset`` shuffles before partitioning), which makes
    ``iid``'s contiguous shards random; the partitioner's own seed is drawn from the same generator. ``iid`` cuts
    the permutation directly (``iid_offsets``, the same shards as flwr's ``IidPartitioner``); the others hand a
    ``datasets.Dataset`` to the flwr-datasets partitioner.
    """
    order = rng.permutation(len(labels))
    ctx = PartitionContext(
        num_clients=num_clients,
        num_examples=len(labels),
        seed=int(rng.integers(2**32)),
        label_column=LABEL,
        user_column=USER if users is not None else None,
        dataset=dataset,
    )
    if name == "iid":
        resolve_partitioner_args("iid", values)
        check_enough_examples(ctx)
        parts = Partitions(order, iid_offsets(len(order), num_clients))
        _check_none_empty(parts, name, values, ctx)
        return parts
    partitioner = build_partitioner(name, values, ctx)
    import datasets  # importable once build_partitioner could import flwr_datasets

    columns: dict[str, Any] = {INDEX: order.astype(np.int64), LABEL: labels[order]}
    if users is not None:
        columns[USER] = users[order]
    partitioner.dataset = datasets.Dataset.from_dict(columns)
    return read_partitions(partitioner, name, values, ctx)


def column(ds: datasets.Dataset, name: str) -> np.ndarray:
    """A column of scalars as a numpy array, through Arrow (``np.asarray(ds[name])`` iterates row by row)."""
    return np.asarray(ds.with_format("arrow")[name].to_numpy())


def _check_none_empty(parts: Partitions, name: str, values: Any, ctx: PartitionContext) -> None:
    empty = np.flatnonzero(parts.sizes() == 0)
    if len(empty):
        raise ConfigError(
            FIELD,
            f"settings under which every client gets at least one example ({name} left {len(empty)} of "
            f"{ctx.num_clients} clients empty, e.g. client {empty[0]}; use fewer clients, a larger alpha or "
            "more data)",
            dict(values or {}),
        )


def _invalid(name: str, ctx: PartitionContext, exc: Exception, values: Any) -> ConfigError:
    return ConfigError(
        FIELD,
        f"settings {name} can satisfy with {ctx.num_clients} clients on {ctx.num_examples} training examples "
        f"(flwr-datasets: {exc})",
        dict(values or {}),
    )
