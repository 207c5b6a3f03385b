"""One copy of a run's data per machine: built once, written as raw files, memory-mapped by every process.

Without it, the server and each worker would each generate or load the whole dataset (W+1 copies in memory,
and W+1 times the start-up work: 4 s per worker for the 10 000-client benchmark). With it, the first process
to need the data builds it under a file lock and writes it to ``<cache>/<key>/``; every other process (and the
next run of the same scenario) maps those files read-only, sharing the pages through the OS page cache.

The key hashes everything the data depends on: the scenario's ``data`` block, ``population.clients`` and
``seed``; the code that makes the data (:func:`code_fingerprint`: the source of ``fedsim/data/``, of the scenario
to data glue and of this module, and the versions of the libraries that load and partition); and for ``parquet:``
files their size and modification time. So a change to a generator or a partitioner builds fresh data instead of
silently reusing the old. ``FEDSIM_CACHE_DIR`` sets the
folder (default: ``<tmp>/fedsim-cache-<uid>``); ``FEDSIM_DATA_CACHE=0`` turns the cache off. Deleting the folder
is always safe.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fedsim.data
from fedsim.data import FederatedData
from fedsim.data.filestore import build_once, cache_enabled, cache_root
from fedsim.data.partitions import Partitions
from fedsim.scenario import Scenario

log = logging.getLogger("fedsim")

_TENSORS = ("train_x", "train_y", "test_x", "test_y")
_DTYPES = {"float32": torch.float32, "int64": torch.int64}


DATA_LIBRARIES = ("numpy", "torch", "scikit-learn", "datasets", "flwr-datasets", "pyarrow")
"""Distributions whose code loads, generates or partitions a dataset (their versions enter the key)."""


def data_sources() -> list[Path]:
    """The source files of the code that turns a scenario into its data: every module of ``fedsim/data/``, the
    engine's scenario-to-data glue (``fedsim/engine/setup.py``) and this module (the file format)."""
    here = Path(__file__).resolve()
    package = Path(fedsim.data.__file__).resolve().parent
    return [*sorted(package.rglob("*.py")), here.with_name("setup.py"), here]


def fingerprint_files(paths: list[Path]) -> str:
    """A hash of the names and contents of ``paths`` (a missing file counts as missing, not as an error)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """A hash of the code that makes the data (:func:`data_sources`, :data:`DATA_LIBRARIES`' versions), computed
    once per process (a few hundred kilobytes read)."""
    versions = []
    for name in DATA_LIBRARIES:
        try:
            versions.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    return fingerprint_files(data_sources()) + ";" + ",".join(versions)


def data_key(scenario: Scenario) -> str:
    """A hash of everything the scenario's data depends on (its settings and the code that makes it)."""
    spec: dict[str, Any] = {
        "data": scenario.data.model_dump(mode="json"),
        "clients": scenario.population.clients,
        "seed": scenario.seed,
        "code": code_fingerprint(),
        "format": 1,
    }
    if scenario.data.dataset.startswith("parquet:"):
        path = Path(scenario.data.dataset.partition(":")[2])
        with contextlib.suppress(OSError):
            st = path.stat()
            spec["file"] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def save(data: FederatedData, folder: Path) -> None:
    """Write ``data`` as raw little-endian files plus ``meta.json`` (written last: it marks the folder done)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"num_classes": data.num_classes, "input_shape": list(data.input_shape)}
    for name in _TENSORS:
        t = getattr(data, name).detach().cpu().contiguous()
        t.numpy().tofile(folder / f"{name}.bin")
        meta[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    data.partitions.indices.tofile(folder / "indices.bin")
    data.partitions.offsets.tofile(folder / "offsets.bin")
    (folder / "meta.json").write_text(json.dumps(meta))


def load(folder: Path) -> FederatedData:
    """Map a saved dataset: tensors backed by the files (copy-on-write, shared page cache)."""
    meta = json.loads((folder / "meta.json").read_text())
    tensors = {}
    for name in _TENSORS:
        shape, dtype = meta[name]["shape"], _DTYPES[meta[name]["dtype"]]
        numel = int(np.prod(shape))
        flat = torch.from_file(str(folder / f"{name}.bin"), shared=False, size=numel, dtype=dtype)
        tensors[name] = flat.view(*shape)
    parts = Partitions(
        np.fromfile(folder / "indices.bin", dtype=np.int64),
        np.fromfile(folder / "offsets.bin", dtype=np.int64),
    )
    return FederatedData(
        **tensors,
        partitions=parts,
        num_classes=int(meta["num_classes"]),
        input_shape=tuple(meta["input_shape"]),
    )


def cached(scenario: Scenario, build: Callable[[], FederatedData]) -> FederatedData:
    """The scenario's data from the machine's cache, built (once, under a lock) with ``build`` if missing.

    Falls back to ``build()`` in memory, with one log line, when the cache folder cannot be written.
    """
    if not cache_enabled():
        return build()
    root = cache_root()
    try:
        return load(build_once(root, data_key(scenario), lambda folder: save(build(), folder)))
    except OSError as exc:
        log.warning("fedsim: data cache at %s unusable (%s); building the data in memory", root, exc)
        return build()
