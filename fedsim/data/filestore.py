"""The machine's data cache folder, its file lock and its write-once folders, shared by the engine's cache of built datasets
(``fedsim.engine.data_cache``) and the memory-mapped file-backed datasets (``fedsim.data.mapped``).

``FEDSIM_CACHE_DIR`` sets the folder (default: ``<tmp>/fedsim-cache-<uid>``); ``FEDSIM_DATA_CACHE=0`` turns the
cache off. Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def cache_root() -> Path:
    """``FEDSIM_CACHE_DIR``, or a per-user folder in the system's temporary directory."""
    env = os.environ.get("FEDSIM_CACHE_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"fedsim-cache-{os.getuid()}"


def cache_enabled() -> bool:
    return os.environ.get("FEDSIM_DATA_CACHE", "1") not in ("0", "false", "no")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (a no-op where ``fcntl`` does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(root: Path, name: str, write: Callable[[Path], None]) -> Path:
    """The complete cache folder ``root / name``, written once between processes: the first one to take the lock
    where it is missing runs ``write`` into a private folder and renames it into place, so no process ever sees a
    partial folder (a complete one holds ``meta.json``; one left without it by a crash is replaced).

    Raises what making ``root`` or ``write`` raise (an unwritable cache: ``PermissionError``/``OSError``)."""
    folder = root / name
    if (folder / "meta.json").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / f"{name}.lock"):
        if not (folder / "meta.json").exists():
            partial = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=root))
            try:
                write(partial)
                shutil.rmtree(folder, ignore_errors=True)  # a folder left without meta.json by a crash
                os.replace(partial, folder)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    return folder


FILE_LIBRARIES = ("numpy", "datasets", "flwr-datasets", "pyarrow", "pillow")
"""Distributions whose code reads, decodes or partitions a file-backed dataset (their versions enter its key)."""


@functools.cache
def data_code_fingerprint() -> str:
    """A hash of ``fedsim/data/``'s source and :data:`FILE_LIBRARIES`' versions, computed once per process: a
    change to the code that reads or partitions a file makes its cached copy stale."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    for name in FILE_LIBRARIES:
        try:
            digest.update(f"{name}=={importlib.metadata.version(name)};".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{name} absent;".encode())
    return digest.hexdigest()
