"""The per-process cache of a client-drawn population's drawn clients (``LazyFederatedData``'s, in
``fedsim.data.federated``): a population whose clients' examples are drawn when a cohort asks for them.

Why this module exists: materialising a generated population costs its examples (10^6 clients × 4 × 784 float32
is 12.5 GB) and the time to draw them, although a round trains a cohort of a few hundred. A client-drawn dataset
(``data.args.draw: client``, ``fedsim.data.base.ClientSource``) gives each client's examples from its own stream,
keyed by the run seed and the client id, so any process makes any client's data alone, bit-identically.
``LazyFederatedData`` holds what is small (the central test set, every client's size) and makes a cohort's examples on demand
(``cohort``), keeping the most recently drawn clients in this module's cache, bounded in bytes.

``cohort(cids)`` returns an ordinary ``FederatedData`` holding only those clients' examples, so the cohort
trainers run on it unchanged (so does a gossip worker's shard, with its own nodes as the cohort). Code that wants
the whole population pooled (``train_x``, ``partitions``) gets it materialised once, on first use.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

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
