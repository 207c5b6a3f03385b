"""``LazyFederatedData``: a population whose clients' examples are drawn when a cohort asks for them.

Why this module exists: materialising a generated population costs its examples (10^6 clients × 4 × 784 float32
is 12.5 GB) and the time to draw them, although a round trains a cohort of a few hundred. A client-drawn dataset
(``data.args.draw: client``, ``fedsim.data.base.ClientSource``) gives each client's examples from its own stream,
keyed by the run seed and the client id, so any process makes any client's data alone, bit-identically. This
class holds what is small (the central test set, every client's size) and makes a cohort's examples on demand
(``cohort``), keeping the most recently drawn clients in a cache bounded in bytes.

``cohort(cids)`` returns an ordinary ``FederatedData`` holding only those clients' examples, so the cohort
trainers run on it unchanged. Code that wants the whole population pooled (``train_x``, ``partitions``: gossip)
gets it materialised once, on first use.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedsim.data.base import ClientSource

if TYPE_CHECKING:
    import torch

    from fedsim.data.federated import FederatedData
    from fedsim.data.partitions import Partitions

CACHE_BYTES = 256 * 2**20
"""Bytes of drawn client examples a process keeps (least recently used clients go first)."""


class ClientCache:
    """Client id -> its examples ``(x, y)`` as numpy arrays, least recently used evicted above ``limit`` bytes."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = int(limit)
        self.nbytes = 0
        self._items: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, cid: int, draw) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            hit = self._items.get(cid)
            if hit is not None:
                self._items.move_to_end(cid)
                return hit
        x, y = draw(cid)
        x.flags.writeable = False
        y.flags.writeable = False
        size = x.nbytes + y.nbytes
        with self._lock:
            if size <= self.limit and cid not in self._items:
                self._items[cid] = (x, y)
                self.nbytes += size
                while self.nbytes > self.limit:
                    _, (ox, oy) = self._items.popitem(last=False)
                    self.nbytes -= ox.nbytes + oy.nbytes
        return x, y

    def __len__(self) -> int:
        return len(self._items)


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

        from fedsim.data.federated import FederatedData
        from fedsim.data.partitions import Partitions

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
