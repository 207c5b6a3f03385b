"""Memory O(cohort): a population of 10^6 clients costs its partition index only, and loads in a blink.

Also: ``iid`` and the generated datasets work without ``datasets``/``flwr_datasets``/``pyarrow`` installed (the
GPU benchmark machine has none of them), and ``fedsim.data`` does not import them until a loader needs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from data_helpers import load

CLIENTS = 1_000_000
PER_CLIENT = 2
BLOBS = {"dataset": "blobs", "args": {"shape": [4], "samples_per_client": PER_CLIENT, "test_samples": 100}}
# What tracemalloc may see per client while loading: it traces numpy buffers and Python objects (not torch
# storages, so not train_x/train_y). Measured: 49 B/client = the row permutation (16) + its read-only copy in
# Partitions (16) + offsets (8) + their temporaries. A list of one numpy view per client adds ~120 B/client and a
# tuple of per-client copies ~136 B/client (both measured), so either would fail this bound.
TRACED_BYTES_PER_CLIENT = 64


def test_a_million_clients_cost_their_partition_index_only():
    load(**BLOBS, num_clients=10)  # imports and first-call costs out of the way
    start = time.perf_counter()
    data = load(**BLOBS, num_clients=CLIENTS)
    wall = time.perf_counter() - start

    parts = data.partitions
    per_client = parts.nbytes / CLIENTS
    print(f"\n10^6 clients: loaded in {wall:.2f} s; partition index {per_client:.2f} B/client")
    assert wall < 30  # ~0.25 s on a 2-core machine; generous for slow CI
    assert len(parts) == CLIENTS and np.all(parts.sizes() == PER_CLIENT)
    assert np.array_equal(np.sort(parts.indices), np.arange(CLIENTS * PER_CLIENT))  # an exact cover
    assert data.num_examples(CLIENTS - 1) == PER_CLIENT
    x, y = data.client_data(123_456)
    assert x.shape == (PER_CLIENT, 4) and y.shape == (PER_CLIENT,)
    assert per_client <= 24 + 8 / CLIENTS  # offsets 8 B + 2 indices x 8 B (+ the one closing offset)

    del data, parts, x, y
    tracemalloc.start()
    try:
        load(**BLOBS, num_clients=CLIENTS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"10^6 clients: peak traced allocation {peak / CLIENTS:.1f} B/client")
    assert peak < TRACED_BYTES_PER_CLIENT * CLIENTS


_WITHOUT_HF = """
import hashlib, json, sys
for name in ("datasets", "flwr_datasets", "pyarrow"):
    sys.modules[name] = None  # any import of them now raises ImportError
from fedsim.data import load_federated_data
from fedsim.errors import ConfigError

def load(dataset, args=None, partitioner="iid"):
    return load_federated_data(dataset=dataset, args=args or {}, partitioner=partitioner, partitioner_args={},
                               test_fraction=0.2, num_clients=10, seed=0)

def digest(d):
    parts = (d.partitions.indices, d.partitions.offsets, d.train_x.numpy(), d.test_y.numpy())
    return hashlib.sha256(b"".join(a.tobytes() for a in parts)).hexdigest()

out = {name: digest(load(name, args)) for name, args in (("blobs", {"shape": [3, 2]}), ("digits", {}))}
try:
    load("digits", partitioner="dirichlet")
except ConfigError as exc:
    out["dirichlet"] = str(exc)
print(json.dumps(out))
"""

_LAZY = """
import json, sys
from fedsim.data import load_federated_data
load_federated_data(dataset="blobs", args={}, partitioner="iid", partitioner_args={}, test_fraction=0.2,
                    num_clients=10, seed=0)
print(json.dumps(sorted(m for m in ("datasets", "flwr_datasets") if m in sys.modules)))
"""


def _run(script: str) -> object:
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "HF_DATASETS_OFFLINE": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _digest(data) -> str:
    parts = (data.partitions.indices, data.partitions.offsets, data.train_x.numpy(), data.test_y.numpy())
    return hashlib.sha256(b"".join(a.tobytes() for a in parts)).hexdigest()


def test_iid_and_generated_data_work_without_the_hugging_face_stack():
    """Oracle: the same loads in this process, where the libraries are installed (bit-identical data)."""
    out = _run(_WITHOUT_HF)
    for name, args in (("blobs", {"shape": [3, 2]}), ("digits", {})):
        assert out[name] == _digest(load(dataset=name, args=args)), name
    assert out["dirichlet"].startswith("data.partitioner must be iid where flwr-datasets cannot be imported")


def test_importing_fedsim_data_does_not_import_the_hugging_face_stack():
    assert _run(_LAZY) == []
