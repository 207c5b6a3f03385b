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

from fedsim.data._args import Args
from fedsim.data.base import PREFIXED_DATASETS, DataRequest, SplitData
from fedsim.errors import ConfigError

_COMMON_KEYS = ("x", "y", "user", "train_split", "test_split", "cache_dir")


@PREFIXED_DATASETS.register("hf")
def hub(request: DataRequest) -> SplitData:
    """A Hugging Face Hub dataset, e.g. ``hf:ylecun/mnist`` (downloaded and cached by ``datasets``).

    ``data.args``: ``x`` (feature column, or list of numeric columns; default ``image`` if present, else every
    column but the label and user), ``y`` (label column, ``label``), ``user`` (natural-id column for the
    ``natural`` partitioner), ``train_split`` (``train``), ``test_split`` (``test``; when the dataset has no such
    split a seeded stratified ``test_fraction`` of the train split is held out), ``subset`` (configuration
    name), ``cache_dir``.

    References:
        Beutel, D. J. et al., "Flower: A Friendly Federated Learning Research Framework", arXiv:2007.14390, 2020
        (flwr-datasets' ``FederatedDataset``). Lhoest, Q. et al., "Datasets: A Community Library for Natural
        Language Processing", EMNLP 2021 (system demos), arXiv:2109.02846.
    """
    args = Args(request.args, field="data.args", owner="hf datasets", accepted=(*_COMMON_KEYS, "subset"))
    return _loader(request)(
        request, args, dataset=request.target or "", subset=args.string("subset", None), load_kwargs={}
    )


@PREFIXED_DATASETS.register("parquet")
def parquet(request: DataRequest) -> SplitData:
    """A local parquet file (or glob), e.g. ``parquet:data/train.parquet``; works offline.

    ``data.args`` as for ``hf:`` (without ``subset``), plus ``test_path``: a parquet file used as the test split.
    Images stored by ``datasets`` (``Image`` feature) decode to float32 ``(C, H, W)`` in [0, 1].

    References:
        Beutel, D. J. et al., "Flower: A Friendly Federated Learning Research Framework", arXiv:2007.14390, 2020.
    """
    args = Args(
        request.args, field="data.args", owner="parquet datasets", accepted=(*_COMMON_KEYS, "test_path")
    )
    path = request.target or ""
    test_path = args.string("test_path", None)
    for field, value, shown in (
        ("data.dataset", path, request.name),
        ("data.args.test_path", test_path, test_path),
    ):
        if value is not None and not glob.glob(value):
            raise ConfigError(field, "the path of an existing parquet file", shown)
    data_files: Any = path if test_path is None else {"train": path, "test": test_path}
    return _loader(request)(
        request, args, dataset="parquet", subset=None, load_kwargs={"data_files": data_files}
    )


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
