"""File-backed datasets (``parquet:<path>``, ``hf:<name>``) with ``data.args.draw: client``: the train split's
features converted once into a raw float32 file in the machine's data cache and memory-mapped by every process,
a client's rows gathered when a round asks for them.

Why this module exists: the default path (``draw: population``) materialises the whole train split as tensors in
the process that builds it, so a file larger than memory cannot be used and a large one costs its size in every
run's peak memory. Here the building process streams the split in record batches into ``features.npy`` (the
train file's rows in file order, float32), and what partitioning needs (labels, user ids) goes through the very
same ``FederatedDataset`` code as ``population``'s (loading, the seeded shuffle, the held-out test split, the
partitioner), so every client holds exactly the rows, in the same order, that the materialised path gives it, and
a run's metrics are the same. The partition indices are stored as rows of ``features.npy``.

Every other process (the workers, the next run) finds the folder complete and maps it without importing
``datasets``: it holds 8 bytes per row (labels) and per client (offsets), the central test set mapped (its pages
are read when evaluated), and gathers a cohort's rows by their indices. Pages of the mapping a gather read are
dropped from the process again (``madvise(MADV_DONTNEED)``) once more than ``RESIDENT_PAGES`` were touched: the
data stay in the OS page cache, shared by the processes, and the process's resident memory grows with the
cohort, not the file.

Layout of ``<cache>/mapped-<key>/``: ``features.npy`` (float32 ``[rows, *input_shape]``), ``labels.npy`` (int64,
by row; rows held out for the test set are 0), ``indices.npy`` / ``offsets.npy`` (every client's rows, as
``Partitions``), ``test_x.npy`` / ``test_y.npy``, and ``meta.json`` (written last: it marks the folder done).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.base import ClientSource, DataRequest, SplitData
from fedsim.data.filestore import cache_enabled, cache_root, data_code_fingerprint, locked
from fedsim.data.partitioners import PARTITIONERS

FORMAT = 1
PAGE = mmap.PAGESIZE
RESIDENT_PAGES = 16384
"""Pages of ``features.npy`` (64 MiB at 4 KiB pages) a process's gathers may leave resident before they are
dropped from it (they stay in the page cache)."""


def mapped_key(request: DataRequest, files: list[str]) -> str:
    """A hash of everything the mapped copy depends on: the request (dataset, arguments, partitioner, test
    fraction, clients, seed), the files' paths, sizes and modification times, and the code that reads them."""
    stats = []
    for path in files:
        st = os.stat(path)
        stats.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    spec = {
        "name": request.name,
        "args": {k: v for k, v in request.args.items() if k != "cache_dir"},
        "partitioner": request.partitioner,
        "partitioner_args": dict(request.partitioner_args),
        "test_fraction": request.test_fraction,
        "clients": request.num_clients,
        "seed": request.seed,
        "files": stats,
        "code": data_code_fingerprint(),
        "format": FORMAT,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


def mapped_split(request: DataRequest, files: list[str], build: Callable[[Path], None]) -> SplitData:
    """The client-drawn ``SplitData`` of a file-backed dataset: its mapped copy from the machine's data cache,
    made once (under a file lock) by ``build(folder)`` where missing.

    With the cache off (``FEDSIM_DATA_CACHE=0``) or unwritable, the copy is made in a temporary folder, mapped,
    and the folder removed (the mapping keeps the files until the process ends).
    """
    if cache_enabled():
        root = cache_root()
        folder = root / f"mapped-{mapped_key(request, files)}"
        if (folder / "meta.json").exists():
            return open_split(folder)
        try:
            root.mkdir(parents=True, exist_ok=True)
            with locked(root / f"{folder.name}.lock"):
                if not (folder / "meta.json").exists():
                    partial = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", dir=root))
                    try:
                        build(partial)
                        shutil.rmtree(
                            folder, ignore_errors=True
                        )  # a folder left without meta.json by a crash
                        os.replace(partial, folder)
                    finally:
                        shutil.rmtree(partial, ignore_errors=True)
            return open_split(folder)
        except PermissionError:
            pass  # an unwritable cache: a private copy below
    folder = Path(tempfile.mkdtemp(prefix="fedsim-mapped-"))
    try:
        build(folder)
        return open_split(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def open_split(folder: Path) -> SplitData:
    """Map a complete folder: the test set, every client's size and their rows, as a client-drawn split."""
    meta = json.loads((folder / "meta.json").read_text())
    rows = MappedRows(folder)
    shape = tuple(meta["input_shape"])
    return SplitData(
        train_x=np.zeros((0, *shape), dtype=np.float32),
        train_y=np.zeros(0, dtype=np.int64),
        test_x=np.load(folder / "test_x.npy", mmap_mode="c"),
        test_y=np.load(folder / "test_y.npy"),
        num_classes=int(meta["num_classes"]),
        source=ClientSource(sizes=np.diff(rows.offsets), draw=rows, partitioners=tuple(PARTITIONERS.names())),
    )


class MappedRows:
    """``rows(cid)``: client ``cid``'s examples ``(x float32, y int64)`` gathered from the mapped files.

    Thread-safe; pickles as its folder (an unpickled copy maps the files again).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.labels = np.load(self.folder / "labels.npy", mmap_mode="r")
        self.indices = np.load(self.folder / "indices.npy", mmap_mode="r")
        self.offsets = np.load(self.folder / "offsets.npy")
        header = np.load(self.folder / "features.npy", mmap_mode="r")  # reads the header: shape, offset
        shape, start = header.shape, header.offset
        del header
        with open(self.folder / "features.npy", "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        count = int(np.prod(shape))
        self.features = np.frombuffer(self._map, dtype="<f4", count=count, offset=start).reshape(shape)
        self._row_pages = -(-self.features[0].nbytes // PAGE) + 1 if len(self.features) else 1
        self._touched = 0
        self._lock = threading.Lock()

    def __call__(self, cid: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(self.indices[self.offsets[cid] : self.offsets[cid + 1]])
        x = self.features[rows]  # a gather: a new array
        y = np.asarray(self.labels[rows], dtype=np.int64)
        self._release(len(rows))
        return x, y

    def _release(self, rows: int) -> None:
        """Count the pages a gather may have read; past ``RESIDENT_PAGES``, drop them from this process."""
        with self._lock:
            self._touched += rows * self._row_pages
            if self._touched <= RESIDENT_PAGES or not hasattr(self._map, "madvise"):
                return
            self._touched = 0
        self._map.madvise(mmap.MADV_DONTNEED)  # clean file pages: a later read faults them in from the cache

    def __reduce__(self) -> tuple[type[MappedRows], tuple[Path]]:
        return (MappedRows, (self.folder,))


class RowWriter:
    """Writes a ``.npy`` of ``count`` rows of one shape: rows in order (``append``) or at given positions
    (``put``), through the file, never a writable mapping (whose dirty pages would count as the process's)."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = Path(path)
        self.count = count
        self._handle: Any = None
        self._start = 0
        self._row_bytes = 0
        self.shape: tuple[int, ...] | None = None
        self._next = 0

    def _open(self, row_shape: tuple[int, ...]) -> None:
        header = np.lib.format.open_memmap(
            self.path, mode="w+", dtype=np.float32, shape=(self.count, *row_shape)
        )  # writes the header and sizes the (sparse) file
        self._start = header.offset
        del header
        self.shape = row_shape
        self._row_bytes = int(np.prod(row_shape, dtype=np.int64)) * 4
        self._handle = open(self.path, "r+b")  # noqa: SIM115 - closed in close()

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype="<f4")
        if self._handle is None:
            self._open(tuple(x.shape[1:]))
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"rows of shape {tuple(x.shape[1:])} after rows of shape {self.shape}")
        return x

    def append(self, x: np.ndarray) -> None:
        x = self._check(x)
        self._handle.seek(self._start + self._next * self._row_bytes)
        self._handle.write(x.tobytes())
        self._next += len(x)

    def put(self, positions: np.ndarray, x: np.ndarray) -> None:
        x = self._check(x)
        fd = self._handle.fileno()
        for pos, row in zip(positions.tolist(), x, strict=True):
            os.pwrite(fd, row.tobytes(), self._start + int(pos) * self._row_bytes)

    def close(self, row_shape: tuple[int, ...]) -> None:
        """Finish the file (an empty one of ``row_shape`` when nothing was written)."""
        if self._handle is None:
            self._open(row_shape)
        self._handle.close()


def write_meta(folder: Path, meta: Mapping[str, Any]) -> None:
    (folder / "meta.json").write_text(json.dumps(dict(meta)))
