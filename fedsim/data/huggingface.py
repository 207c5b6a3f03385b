"""Hugging Face Hub datasets (``hf:<name>``, needs network) and local parquet files (``parquet:<path>``).

Both go through flwr-datasets' ``FederatedDataset``, which loads with ``datasets.load_dataset``, shuffles with a
seed, resplits through our preprocessor (adds the row-index column, holds out a test split when the data has
none) and hands the train split to the partitioner named in the scenario. ``parquet`` is the ``datasets``
packaged builder, so ``parquet:<path>`` is ``FederatedDataset(dataset="parquet", data_files=<path>, ...)``.

This module only registers and validates; the loading itself lives in ``fedsim.data._hf``, imported on first
use, so ``fedsim.data`` imports (and its generated datasets work) without ``datasets``/``flwr_datasets``/``pyarrow``.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from typing import Any

from fedsim.argspec import ArgSpec, choice, custom, declares, text
from fedsim.data.base import DRAWS, PREFIXED_DATASETS, DataRequest, SplitData
from fedsim.errors import ConfigError


def _check_columns(field: str, value: Any) -> str | list[str]:
    ok = isinstance(value, str) and value
    ok = ok or (isinstance(value, list) and value and all(isinstance(c, str) and c for c in value))
    if not ok:
        raise ConfigError(field, "a column name or a non-empty list of column names", value)
    return value


_COMMON = (
    custom(
        "x",
        None,
        _check_columns,
        "a column name or a non-empty list of column names",
        default_doc="image if present, else every column but the label and user",
    ),
    text("y", "label"),
    text("user", None),
    text("train_split", "train"),
    text("test_split", None, default_doc="test where the data has it, else a held-out test_fraction"),
    text("cache_dir", None),
    choice("draw", "population", DRAWS),
)


@PREFIXED_DATASETS.register("hf")
@declares(ArgSpec((*_COMMON, text("subset", None))), task="classification")
def hub(request: DataRequest) -> SplitData:
    """A Hugging Face Hub dataset, e.g. ``hf:ylecun/mnist`` (downloaded and cached by ``datasets``).

    ``data.args``: ``x`` (feature column, or list of numeric columns; default ``image`` if present, else every
    column but the label and user), ``y`` (label column, ``label``), ``user`` (natural-id column for the
    ``natural`` partitioner), ``train_split`` (``train``), ``test_split`` (``test``; when the dataset has no such
    split a seeded stratified ``test_fraction`` of the train split is held out), ``subset`` (configuration
    name), ``cache_dir``, ``draw`` (``population``; ``client``: read from the data cache a client at a time, see ``parquet``).

    References:
        Beutel, D. J. et al., "Flower: A Friendly Federated Learning Research Framework", arXiv:2007.14390, 2020
        (flwr-datasets' ``FederatedDataset``). Lhoest, Q. et al., "Datasets: A Community Library for Natural
        Language Processing", EMNLP 2021 (system demos), arXiv:2109.02846.
    """
    return _load(
        request, files=[], dataset=request.target or "", subset=request.args["subset"], load_kwargs={}
    )


@PREFIXED_DATASETS.register("parquet")
@declares(ArgSpec((*_COMMON, text("test_path", None))), task="classification")
def parquet(request: DataRequest) -> SplitData:
    """A local parquet file (or glob), e.g. ``parquet:data/train.parquet``; works offline.

    ``data.args`` as for ``hf:`` (without ``subset``), plus ``test_path``: a parquet file used as the test split.
    Images stored by ``datasets`` (``Image`` feature) decode to float32 ``(C, H, W)`` in [0, 1].

    ``draw``: ``population`` (default) materialises the train split as tensors (and the engine writes them to
    the machine's data cache); ``client`` converts the train split's features once, batch by batch, into a
    float32 file in the data cache that every process opens, and reads a client's rows when a round
    trains it (``fedsim.data.mapped``): the same clients, rows, order and test set as ``population``, so a run's
    metrics are the same, with memory that grows with the cohort, not the file.

    References:
        Beutel, D. J. et al., "Flower: A Friendly Federated Learning Research Framework", arXiv:2007.14390, 2020.
    """
    args = request.args
    path = request.target or ""
    test_path = args["test_path"]
    for field, value, shown in (
        ("data.dataset", path, request.name),
        ("data.args.test_path", test_path, test_path),
    ):
        if value is not None and not glob.glob(value):
            raise ConfigError(field, "the path of an existing parquet file", shown)
    data_files: Any = path if test_path is None else {"train": path, "test": test_path}
    return _load(
        request,
        files=[f for p in (path, test_path) if p is not None for f in sorted(glob.glob(p))],
        dataset="parquet",
        subset=None,
        load_kwargs={"data_files": data_files},
        mapped={"parquet": {"train": path} if test_path is None else {"train": path, "test": test_path}},
    )


def _load(
    request: DataRequest, *, files: list[str], mapped: dict[str, Any] | None = None, **how: Any
) -> SplitData:
    """Materialised (``draw: population``) or mapped from the machine's data cache (``draw: client``: the
    libraries are imported only where the mapped copy must be made)."""
    if request.args["draw"] == "client":
        from fedsim.data.mapped import mapped_split

        def build(folder: Any) -> None:
            from fedsim.data._hf import build_mapped

            _loader(request)  # a ConfigError where the libraries are missing
            build_mapped(folder, request, request.args, **how, **(mapped or {}))

        return mapped_split(request, files, build)
    return _loader(request)(request, request.args, **how)


def _loader(request: DataRequest) -> Callable[..., SplitData]:
    """``fedsim.data._hf.load_split_data``, or a ``ConfigError`` where its libraries are not installed."""
    try:
        from fedsim.data._hf import load_split_data
    except ImportError as exc:
        raise ConfigError(
            "data.dataset",
            f"a generated dataset where datasets/flwr-datasets cannot be imported ({exc.name} is missing)",
            request.name,
        ) from None
    return load_split_data
