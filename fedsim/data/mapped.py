"""File-backed datasets (``parquet:<path>``, ``hf:<name>``) with ``data.args.draw: client``: the train split's
features converted once into a raw float32 file in the machine's data cache, which every process opens and reads
a client's rows from when a round asks for them.

Why this module exists: the default path (``draw: population``) materialises the whole train split as tensors in
the process that builds it, so a file larger than memory cannot be used and a large one costs its size in every
run's peak memory. Here the building process streams the split in record batches into ``features.npy`` (the
train file's rows in file order, float32), and what partitioning needs (labels, user ids) goes through
``FederatedDataset`` as under ``population`` (loading, the seeded shuffle, the held-out test split, the
partitioner; ``fedsim.data._hf.build_mapped`` says what it does differently and why it is the same), so every client holds exactly the rows, in the same order, that the materialised path gives it, and
a run's metrics are the same. The partition indices are stored as rows of ``features.npy``.

Every other process (the workers, the next run) finds the folder complete and opens it without importing
``datasets``: it maps 8 bytes per row (labels) and holds 8 per client (offsets), maps the central test set (its
pages are read when evaluated), and reads a cohort's rows by their indices with positioned reads
(``MappedRows``): the file's pages stay in the OS page cache, shared by the processes, and the process's resident
memory grows with the cohort, not the file.

Layout of ``<cache>/mapped-<key>/``: ``features.npy`` (float32 ``[rows, *input_shape]``), ``labels.npy`` (int64,
by row; rows held out for the test set are 0), ``indices.npy`` / ``offsets.npy`` (every client's rows, as
``Partitions``), ``test_x.npy`` / ``test_y.npy``, and ``meta.json`` (written last: it marks the folder done).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.base import ClientSource, DataRequest, SplitData
from fedsim.data.filestore import build_once, cache_enabled, cache_root, data_code_fingerprint
from fedsim.data.partitioners import PARTITIONERS

FORMAT = 1


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
        try:
            return open_split(build_once(cache_root(), f"mapped-{mapped_key(request, files)}", build))
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
    """``rows(cid)``: client ``cid``'s examples ``(x float32, y int64)`` read from the cached files.

    The features are read with positioned reads (``os.preadv``, one per run of consecutive rows), not through a
    mapping: a page fault on a mapped file maps up to 16 neighbouring pages (the kernel's fault-around), so
    gathering scattered rows would leave ~64 KiB resident per row. Read, the rows cost the process their own
    bytes; the file's pages stay in the OS page cache, shared by the processes. ``labels.npy`` and the partition
    index are memory-mapped (8 bytes per row). Thread-safe; pickles as its folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.labels = np.load(self.folder / "labels.npy", mmap_mode="r")
        self.indices = np.load(self.folder / "indices.npy", mmap_mode="r")
        self.offsets = np.load(self.folder / "offsets.npy")
        header = np.load(self.folder / "features.npy", mmap_mode="r")  # the header only: shape, data offset
        self.shape: tuple[int, ...] = tuple(header.shape)
        self._start = int(header.offset)
        del header
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * 4
        self._fd = os.open(self.folder / "features.npy", os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __call__(self, cid: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.array(self.indices[self.offsets[cid] : self.offsets[cid + 1]], dtype=np.int64)
        return self.read(rows), np.array(self.labels[rows], dtype=np.int64)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The features of ``rows`` (file rows, any order), float32 ``[len(rows), *input_shape]``."""
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        found = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        flat = memoryview(found.reshape(-1)).cast("B")
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for lo, hi in zip(
            [0, *breaks.tolist()], [*breaks.tolist(), len(rows)], strict=True
        ):  # one read per run of consecutive rows
            if hi > lo:
                want = (hi - lo) * self._row_bytes
                got = os.preadv(
                    self._fd,
                    [flat[lo * self._row_bytes : hi * self._row_bytes]],
                    self._start + int(ordered[lo]) * self._row_bytes,
                )
                if got != want:
                    raise OSError(f"{self.folder / 'features.npy'}: short read ({got} of {want} bytes)")
        x = np.empty_like(found)
        x[order] = found
        return x

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
