"""Loading through flwr-datasets' ``FederatedDataset`` for ``hf:<name>`` and ``parquet:<path>``.

Kept apart from ``fedsim.data.huggingface`` (which registers the names) because it needs ``datasets``,
``flwr_datasets`` and ``pyarrow`` at import; it is imported only when such a dataset is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.data_files import resolve_pattern
from datasets.table import InMemoryTable, table_cast
from flwr_datasets import FederatedDataset
from flwr_datasets.partitioner import Partitioner

from fedsim.data.base import PARTITION, TEST_SPLIT, DataRequest, SplitData, stratified_split
from fedsim.data.mapped import RowWriter, write_meta
from fedsim.data.partitioners import INDEX, PartitionContext, build_partitioner, column, read_partitions
from fedsim.data.partitions import Partitions
from fedsim.errors import ConfigError

ROW = "__fedsim_row__"
"""With ``draw: client``: a row's number in its split as loaded (file order), added before the shuffle."""


class _SizedPartitioner(Partitioner):
    """Builds the scenario's partitioner once the train split (and so its size) is known.

    ``FederatedDataset`` wants its partitioners up front, but defaults such as Dirichlet's
    ``min_partition_size`` depend on the number of training rows, known only after loading and resplitting.
    """

    def __init__(self, request: DataRequest, ctx: PartitionContext) -> None:
        super().__init__()
        self._request = request
        self._ctx = ctx
        self._inner: Partitioner | None = None

    @property
    def context(self) -> PartitionContext:
        return replace(self._ctx, num_examples=self.dataset.num_rows)

    def inner(self) -> Partitioner:
        if self._inner is None:
            self._inner = build_partitioner(
                self._request.partitioner, self._request.partitioner_args, self.context
            )
            self._inner.dataset = self.dataset
        return self._inner

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        return self.inner().load_partition(partition_id)

    @property
    def num_partitions(self) -> int:
        return self.inner().num_partitions


def load_split_data(
    request: DataRequest,
    args: Mapping[str, Any],
    *,
    dataset: str,
    subset: str | None,
    load_kwargs: dict[str, Any],
) -> SplitData:
    """Load ``dataset`` through ``FederatedDataset``, resplit it and partition its train split (see the loaders)."""
    loaded = _load(request, args, dataset=dataset, subset=subset, load_kwargs=load_kwargs, rows=False)
    train, test = loaded.train, loaded.test
    x_cols = _feature_columns(train, args["x"], args["y"], args["user"])
    train_y, test_y, num_classes = _labels(train, test, args["y"])
    return SplitData(
        train_x=_features(train, x_cols),
        train_y=train_y,
        test_x=_features(test, x_cols),
        test_y=test_y,
        num_classes=num_classes,
        partitions=loaded.partitions,
    )


@dataclass
class _Loaded:
    """What ``FederatedDataset`` gave: the train split (shuffled, test rows removed, partitioned), the test
    split, every client's rows of ``train``; with ``rows``, also the splits as loaded (file order) and which of
    them the test set came from."""

    train: datasets.Dataset
    test: datasets.Dataset
    partitions: Partitions
    raw: dict[str, datasets.Dataset] = field(default_factory=dict)
    test_source: str = ""
    train_source: str = ""


def _load(
    request: DataRequest,
    args: Mapping[str, Any],
    *,
    dataset: str,
    subset: str | None,
    load_kwargs: dict[str, Any],
    rows: bool,
) -> _Loaded:
    """Load, shuffle, resplit and partition through ``FederatedDataset``. With ``rows``, every split first gets
    the column ``ROW`` (its row number as loaded) and is then shuffled by the same call ``FederatedDataset``
    makes (``DatasetDict.shuffle(seed=...)``: the permutation depends on the number of rows and the seed only),
    so the rows, the test split and the partitions are those of ``rows=False``, and ``ROW`` says where each row
    lies in the file."""
    y_col, user_col, train_split = args["y"], args["user"], args["train_split"]
    explicit_test_split = args["test_split"] is not None
    test_split = args["test_split"] or "test"
    cache_dir = args["cache_dir"]
    if cache_dir is not None:
        load_kwargs = {**load_kwargs, "cache_dir": cache_dir}
    rng = request.rng(PARTITION)
    shuffle_seed, partition_seed = (int(s) for s in rng.integers(2**32, size=2))
    raw: dict[str, datasets.Dataset] = {}
    sources = {"train": train_split, "test": train_split}

    def check_split(dd: datasets.DatasetDict) -> None:
        if train_split not in dd:
            raise ConfigError(
                "data.args.train_split", f"a split of {request.name} ({', '.join(dd)})", train_split
            )

    def check_columns(train: datasets.Dataset) -> None:
        for field_, col in (("data.args.y", y_col), ("data.args.user", user_col)):
            if col is not None and col not in train.column_names:
                raise ConfigError(
                    field_, f"a column of {request.name} ({', '.join(train.column_names)})", col
                )

    def preprocess(dd: datasets.DatasetDict) -> datasets.DatasetDict:
        check_split(dd)
        train = dd[train_split]
        check_columns(train)
        if test_split in dd and test_split != train_split:
            test = dd[test_split]
            sources["test"] = test_split
        elif explicit_test_split:
            raise ConfigError(
                "data.args.test_split", f"a split of {request.name} ({', '.join(dd)})", test_split
            )
        else:
            labels = column(train, y_col)
            keep, held_out = stratified_split(labels, request.test_fraction, request.rng(TEST_SPLIT))
            train, test = train.select(keep), train.select(held_out)
        train = train.add_column(INDEX, np.arange(len(train), dtype=np.int64))
        return datasets.DatasetDict({"train": train, "test": test})

    def preprocess_rows(dd: datasets.DatasetDict) -> datasets.DatasetDict:
        """``preprocess`` of the shuffled splits, on their label, user and row-number columns only, as numpy
        arrays in memory (the features stay in the files, streamed later from ``raw``). ``datasets`` would
        read a column through the shuffle's index mapping at ~600 bytes a row and flatten the rows after the
        test split with a per-value cast (seconds per 10^5 rows); here they cost their 8 bytes a value."""
        check_split(dd)
        check_columns(dd[train_split])
        raw.update(dd)
        train, features = _shuffled_columns(dd[train_split], (y_col, user_col), shuffle_seed)
        if test_split in dd and test_split != train_split:
            test, test_features = _shuffled_columns(dd[test_split], (y_col, user_col), shuffle_seed)
            sources["test"] = test_split
        elif explicit_test_split:
            raise ConfigError(
                "data.args.test_split", f"a split of {request.name} ({', '.join(dd)})", test_split
            )
        else:
            keep, held_out = stratified_split(train[y_col], request.test_fraction, request.rng(TEST_SPLIT))
            test, test_features = {k: v[held_out] for k, v in train.items()}, features
            train = {k: v[keep] for k, v in train.items()}
        train[INDEX] = np.arange(len(train[ROW]), dtype=np.int64)
        features = datasets.Features({**features, INDEX: datasets.Value("int64")})
        return datasets.DatasetDict(
            {
                "train": _in_memory(train, features),
                "test": _in_memory(test, test_features),
            }
        )

    ctx = PartitionContext(
        num_clients=request.num_clients,
        num_examples=0,  # set by _SizedPartitioner once loaded
        seed=partition_seed,
        label_column=y_col,
        user_column=user_col,
        dataset=request.name,
    )
    partitioner = _SizedPartitioner(request, ctx)
    fds = FederatedDataset(
        dataset=dataset,
        subset=subset,
        preprocessor=preprocess_rows if rows else preprocess,
        partitioners={"train": partitioner},
        shuffle=not rows,
        seed=shuffle_seed,
        **load_kwargs,
    )
    try:
        train = fds.partitioners["train"].dataset  # loads, shuffles, preprocesses, assigns
        test = fds.load_split("test")
    except (
        OSError,
        pa.ArrowException,  # an unreadable file (not parquet, truncated)
        datasets.exceptions.DatasetNotFoundError,
        datasets.exceptions.DatasetGenerationError,
    ) as exc:
        reason = " ".join(str(exc).split())  # one line
        raise ConfigError(
            "data.dataset", f"a dataset that can be loaded ({type(exc).__name__}: {reason})", request.name
        ) from None
    partitions = read_partitions(
        partitioner, request.partitioner, request.partitioner_args, partitioner.context
    )
    return _Loaded(train, test, partitions, raw, sources["test"], sources["train"])


def build_mapped(
    folder: Path,
    request: DataRequest,
    args: Mapping[str, Any],
    *,
    dataset: str,
    subset: str | None,
    load_kwargs: dict[str, Any],
    parquet: Mapping[str, str] | None = None,
) -> None:
    """Write the mapped copy of a file-backed dataset into ``folder`` (``fedsim.data.mapped``'s layout): the
    same load, shuffle, test split and partitions as ``load_split_data``, the features streamed record batch by
    record batch (never the whole split in memory).

    ``parquet`` (local files: split -> the ``data_files`` pattern) has ``datasets`` load the label and user
    columns only (its conversion of a whole file into its own Arrow cache reads it back through a memory map,
    which would count the file in this process's peak), and the features are read from the parquet files
    themselves, row group by row group, in the order ``datasets`` reads them and cast as it casts them.
    Otherwise (``hf:``) they are streamed from the Arrow files ``datasets`` made.
    """
    files: dict[str, list[str]] = {}
    if parquet is not None and args["train_split"] in parquet:
        files = {split: resolve_pattern(pattern, os.getcwd()) for split, pattern in parquet.items()}
        try:
            schema = pq.read_schema(next(iter(files.values()))[0])
        except (OSError, pa.ArrowException) as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(
                "data.dataset", f"a dataset that can be loaded ({type(exc).__name__}: {reason})", request.name
            ) from None
        file_features = datasets.Features.from_arrow_schema(schema)
        for field_, col in (("data.args.y", args["y"]), ("data.args.user", args["user"])):
            if col is not None and col not in schema.names:
                raise ConfigError(field_, f"a column of {request.name} ({', '.join(schema.names)})", col)
        empty = datasets.Dataset(
            InMemoryTable(schema.empty_table()), info=datasets.DatasetInfo(features=file_features)
        )
        x_cols = _feature_columns(empty, args["x"], args["y"], args["user"])
        kept = [c for c in (args["y"], args["user"]) if c is not None]
        load_kwargs = {**load_kwargs, "columns": kept}
    loaded = _load(request, args, dataset=dataset, subset=subset, load_kwargs=load_kwargs, rows=True)
    train, test = loaded.train, loaded.test
    source = loaded.raw[loaded.train_source]

    def batches(split: str) -> Iterator[tuple[int, np.ndarray]]:
        if files:
            return _feature_batches(
                _parquet_tables(files[split], x_cols, file_features), len(source_of(split)), x_cols
            )
        ds = source_of(split)
        return _feature_batches(_arrow_tables(ds), len(ds), x_cols)

    def source_of(split: str) -> datasets.Dataset:
        return loaded.raw[split]

    if not files:
        x_cols = _feature_columns(source, args["x"], args["y"], args["user"])
    train_y, test_y, num_classes = _labels(train, test, args["y"])
    train_rows, test_rows = column(train, ROW), column(test, ROW)
    labels = np.zeros(len(source), dtype=np.int64)
    labels[train_rows] = train_y
    test_at = np.full(len(loaded.raw[loaded.test_source]), -1, dtype=np.int64)
    test_at[test_rows] = np.arange(len(test_rows), dtype=np.int64)
    features = RowWriter(folder / "features.npy", len(source))
    test_x = RowWriter(folder / "test_x.npy", len(test_rows))
    held_out = loaded.test_source == loaded.train_source
    try:
        for start, x in batches(loaded.train_source):
            features.append(x)
            if held_out:
                _put(test_x, test_at[start : start + len(x)], x)
        if not held_out:
            for start, x in batches(loaded.test_source):
                _put(test_x, test_at[start : start + len(x)], x)
    except ValueError:  # rows of two shapes (images of different sizes)
        raise ConfigError("data.args.x", "features of one shape in every row", args["x"]) from None
    row_shape = features.shape or (test_x.shape or (0,))
    features.close(row_shape)
    test_x.close(row_shape)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "indices.npy", train_rows[loaded.partitions.indices])
    np.save(folder / "offsets.npy", np.asarray(loaded.partitions.offsets))
    np.save(folder / "test_y.npy", test_y)
    write_meta(folder, {"num_classes": num_classes, "input_shape": list(row_shape), "rows": len(source)})


def _shuffled_columns(
    ds: datasets.Dataset, names: tuple[str | None, ...], seed: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The columns ``names`` (those present) of ``ds`` and its row numbers ``ROW``, in the order of
    ``ds.shuffle(seed=seed)``, and their features.

    ``Dataset.shuffle`` draws ``np.random.default_rng(seed).permutation(len(ds))`` (its documented default
    generator); that this is the order it gives is checked here on a table of row numbers, so a ``datasets``
    that shuffled otherwise fails loudly instead of giving other clients than ``draw: population``.
    """
    n = len(ds)
    order = np.random.default_rng(seed).permutation(n)
    probe = _in_memory({ROW: np.arange(n, dtype=np.int64)}, datasets.Features({ROW: datasets.Value("int64")}))
    probe = probe.shuffle(seed=seed)
    at = np.unique(np.linspace(0, n - 1, num=min(n, 64)).astype(np.int64))
    if n and not np.array_equal(column(probe.select(at), ROW), order[at]):
        raise RuntimeError("datasets.Dataset.shuffle no longer draws np.random.default_rng(seed).permutation")
    kept = [c for c in names if c is not None and c in ds.column_names]
    columns = {c: column(ds, c)[order] for c in kept}
    columns[ROW] = order.astype(np.int64)
    return columns, datasets.Features({**{c: ds.features[c] for c in kept}, ROW: datasets.Value("int64")})


def _in_memory(columns: Mapping[str, np.ndarray], features: datasets.Features) -> datasets.Dataset:
    """A ``Dataset`` of numpy columns through Arrow directly (``Dataset.from_dict`` goes through Python lists:
    ~60 bytes a value)."""
    table = pa.table({k: pa.array(v) for k, v in columns.items()}).cast(features.arrow_schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))


def _put(writer: RowWriter, positions: np.ndarray, x: np.ndarray) -> None:
    """Write the rows of ``x`` whose test position is set (>= 0) there."""
    keep = positions >= 0
    if keep.any():
        writer.put(positions[keep], x[keep])


def _feature_batches(
    tables: Iterator[tuple[pa.Table, datasets.Features]], rows: int, x_cols: str | list[str]
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, float32 features)`` of a split's record batches, in row order, each turned into features as
    ``load_split_data`` turns the whole split (``_features``); the batches must cover the split's ``rows``."""
    start = 0
    for table, features in tables:
        if table.num_rows == 0:
            continue
        batch = datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))
        x = _features(batch, x_cols)
        yield start, x
        start += len(x)
    if start != rows:
        raise RuntimeError(f"read {start} rows of a split from its files, expected {rows}")


def _arrow_tables(ds: datasets.Dataset) -> Iterator[tuple[pa.Table, datasets.Features]]:
    """A loaded split's record batches, read from its Arrow files (not memory-mapped, so the pages read do not
    stay with the process) or, for a split held in memory, its table."""
    files = [f["filename"] for f in ds.cache_files]
    if files:
        for name in files:
            for t in _file_batches(name):
                yield t, ds.features
    else:
        for b in ds.data.table.to_batches(max_chunksize=4096):
            yield pa.Table.from_batches([b]), ds.features


def _parquet_tables(
    files: list[str], x_cols: str | list[str], features: datasets.Features
) -> Iterator[tuple[pa.Table, datasets.Features]]:
    """The feature columns of parquet files, a row group at a time (the memory a build needs grows with the
    files' row-group size, not their length), cast to ``features`` as ``datasets``' parquet builder casts them
    (``table_cast`` to the schema of the first file)."""
    columns = [x_cols] if isinstance(x_cols, str) else list(x_cols)
    wanted = datasets.Features({c: features[c] for c in columns})
    for name in files:
        # One row group at a time (``iter_batches`` keeps the groups it has read alive until it is done).
        with pq.ParquetFile(name, pre_buffer=False) as handle:
            for group in range(handle.metadata.num_row_groups):
                table = handle.read_row_group(group, columns=columns, use_threads=False)
                yield table_cast(table, wanted.arrow_schema), wanted


def _file_batches(name: str) -> Iterator[pa.Table]:
    """The record batches of one Arrow file (``datasets`` writes the streaming format) through buffered reads."""
    with pa.OSFile(name) as handle:
        try:
            reader: Any = pa.ipc.open_stream(handle)
            batches = iter(reader)
        except pa.ArrowInvalid:
            handle.seek(0)
            reader = pa.ipc.open_file(handle)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        for b in batches:
            yield pa.Table.from_batches([b])


def _feature_columns(ds: datasets.Dataset, spec: Any, y_col: str, user_col: str | None) -> str | list[str]:
    """The feature column (str) or list of numeric columns named by ``data.args.x``, or the default."""
    columns = [c for c in ds.column_names if c != INDEX]
    if spec is None:
        if "image" in columns:
            return "image"
        spec = [c for c in columns if c not in (y_col, user_col)]
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise ConfigError("data.args.x", "a column name or a non-empty list of column names", spec)
    for c in names:
        if c not in columns:
            raise ConfigError("data.args.x", f"columns of the dataset ({', '.join(columns)})", spec)
    return spec if isinstance(spec, str) else names


def _features(ds: datasets.Dataset, cols: str | list[str]) -> np.ndarray:
    """float32 features: images to (C, H, W) in [0, 1]; one array column as is; scalar columns stacked."""
    if isinstance(cols, list):
        try:
            x = np.stack([np.asarray(column(ds, c), dtype=np.float32) for c in cols], axis=1)
        except (ValueError, TypeError):
            raise ConfigError("data.args.x", "numeric scalar columns", cols) from None
        return x
    if isinstance(ds.features[cols], datasets.Image):
        try:
            images = np.asarray(_decoded(ds, cols))
        except ValueError:
            images = np.zeros(0, dtype=object)
        if images.dtype == object or images.ndim not in (3, 4):
            raise ConfigError(
                "data.args.x", f"an image column whose images ({cols}) all have one size and mode", cols
            )
        if images.ndim == 3:  # grayscale [N, H, W]
            images = images[:, None]
        else:  # [N, H, W, C] -> [N, C, H, W]
            images = images.transpose(0, 3, 1, 2)
        return images.astype(np.float32) / 255.0
    try:
        return np.asarray(_decoded(ds, cols), dtype=np.float32)
    except (ValueError, TypeError):
        raise ConfigError("data.args.x", "a numeric (array) column or an image column", cols) from None


def _decoded(ds: datasets.Dataset, name: str) -> Any:
    """A column decoded by ``datasets`` (images to arrays, sequences to arrays), in one batch."""
    return ds.select_columns([name]).with_format("numpy")[:][name]


def _labels(train: datasets.Dataset, test: datasets.Dataset, col: str) -> tuple[np.ndarray, np.ndarray, int]:
    """int64 labels in [0, num_classes): ClassLabel ids, non-negative integers, or sorted distinct strings."""
    feature = train.features[col]
    y_train, y_test = column(train, col), column(test, col)
    if isinstance(feature, datasets.ClassLabel):
        return y_train.astype(np.int64), y_test.astype(np.int64), int(feature.num_classes)
    both = np.concatenate([y_train, y_test])
    if np.issubdtype(both.dtype, np.integer):
        if both.size and both.min() < 0:
            raise ConfigError("data.args.y", "a column of non-negative integer labels", col)
        return y_train.astype(np.int64), y_test.astype(np.int64), int(both.max()) + 1 if both.size else 0
    names = np.unique(both.astype(str))
    lookup: Mapping[str, int] = {n: i for i, n in enumerate(names)}
    encode = np.vectorize(lambda v: lookup[str(v)], otypes=[np.int64])
    return encode(y_train), encode(y_test), len(names)
