"""``Partitions``: every client's row indices in two flat arrays, so the index costs O(examples + clients) bytes.

One numpy array per client costs ~100 bytes of object overhead each and a million Python objects at a population
of 10^6. Here client ``c`` holds ``indices[offsets[c]:offsets[c + 1]]`` (the CSR layout of sparse matrices): two
int64 arrays, and a client's partition is a read-only view made on demand.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np


class Partitions(Sequence[np.ndarray]):
    """A read-only sequence of int64 row-index arrays, one per client, stored as ``indices`` + ``offsets``.

    ``p[cid]`` is a read-only int64 view, so ``len(p)``, iteration and ``np.concatenate(list(p))`` behave as for
    a tuple of arrays.

    Args:
        indices: every client's rows, client after client (copied; the caller's array is left alone).
        offsets: ``clients + 1`` non-decreasing positions into ``indices``, from 0 to ``len(indices)``.
    """

    __slots__ = ("_indices", "_offsets")

    def __init__(self, indices: Any, offsets: Any) -> None:
        idx = np.array(indices, dtype=np.int64)
        off = np.array(offsets, dtype=np.int64)
        if idx.ndim != 1 or off.ndim != 1 or len(off) < 1:
            raise ValueError("Partitions needs 1-D indices and 1-D offsets of length clients + 1")
        if off[0] != 0 or off[-1] != len(idx) or np.any(off[1:] < off[:-1]):
            raise ValueError(
                f"Partitions offsets must rise from 0 to len(indices) = {len(idx)}; got {off[0]} .. {off[-1]}"
            )
        idx.flags.writeable = False
        off.flags.writeable = False
        self._indices = idx
        self._offsets = off

    @classmethod
    def from_arrays(cls, arrays: Iterable[Any]) -> Partitions:
        """Pack one index array per client (e.g. a flwr-datasets partitioner's output)."""
        parts = [np.asarray(a, dtype=np.int64).reshape(-1) for a in arrays]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return cls(indices, offsets)

    @property
    def indices(self) -> np.ndarray:
        """All clients' rows, client after client (read-only int64)."""
        return self._indices

    @property
    def offsets(self) -> np.ndarray:
        """Where each client's rows start in ``indices``, plus the end (read-only int64, ``clients + 1``)."""
        return self._offsets

    @property
    def nbytes(self) -> int:
        """Bytes held by the two arrays."""
        return int(self._indices.nbytes + self._offsets.nbytes)

    def sizes(self) -> np.ndarray:
        """Number of examples of every client (a new int64 array)."""
        return np.diff(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, key: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, key: slice) -> tuple[np.ndarray, ...]: ...

    def __getitem__(self, key: int | slice) -> np.ndarray | tuple[np.ndarray, ...]:
        if isinstance(key, slice):
            return tuple(self[c] for c in range(*key.indices(len(self))))
        cid = operator.index(key)
        n = len(self)
        if cid < 0:
            cid += n
        if not 0 <= cid < n:
            raise IndexError(f"client id {key} out of range [0, {n})")
        return self._indices[self._offsets[cid] : self._offsets[cid + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for cid in range(len(self)):
            yield self._indices[self._offsets[cid] : self._offsets[cid + 1]]

    def __reduce__(self) -> tuple[type[Partitions], tuple[np.ndarray, np.ndarray]]:
        # Rebuild through __init__ so an unpickled copy is read-only too.
        return (Partitions, (self._indices, self._offsets))

    def __repr__(self) -> str:
        return f"Partitions(clients={len(self)}, examples={len(self._indices)}, nbytes={self.nbytes})"
