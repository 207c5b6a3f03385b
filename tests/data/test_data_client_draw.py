"""``data.args.draw: client``: a client's examples drawn on demand from (seed, client id), never the population.

Determinism by (seed, cid) whatever else is drawn (other clients, the population size, the process), the sizes
of the cheap path (``fedsim.data.sizes``), the same distribution and sizes as ``draw: population``, the bounded
cache, and a 10^6-client population that builds in seconds under an address-space limit far below its
materialised size.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import load

from fedsim.data import FederatedData, LazyFederatedData
from fedsim.data.lazy import ClientCache
from fedsim.data.sizes import cheap_client_sizes
from fedsim.errors import ConfigError

BLOBS = {"shape": [3, 4], "classes": 5, "samples_per_client": 6, "test_samples": 40, "draw": "client"}
SYNTHETIC = {
    "dim": 7,
    "classes": 4,
    "samples": {"mean": 2.0, "sigma": 1.0, "min": 5, "max": 40},
    "draw": "client",
}
REGRESSION = {"n": 500, "d": 3, "noise": 0.2, "draw": "client"}
CASES = [("blobs", BLOBS, "iid"), ("synthetic", SYNTHETIC, "natural"), ("regression", REGRESSION, "iid")]
WRONG = {"iid": "dirichlet", "natural": "iid"}
"""A partitioner that does not describe each case's clients (regression refuses the label ones before that)."""


def _load(dataset, args, partitioner, **kw):
    return load(dataset=dataset, args=args, partitioner=partitioner, **kw)


def _equal(a, b) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize(("dataset", "args", "partitioner"), CASES)
def test_a_client_is_its_seed_and_id_only(dataset, args, partitioner):
    """Oracle: the same client of two independent loads, drawn in different orders, among other clients."""
    a = _load(dataset, args, partitioner, num_clients=50)
    b = _load(dataset, args, partitioner, num_clients=50)
    assert isinstance(a, LazyFederatedData)
    for cid in (49, 0, 17):
        _ = b.client_data(cid + 1 if cid < 49 else 0)  # another client first: no shared stream state
        assert _equal(a.client_data(cid), b.client_data(cid)), cid
        assert len(a.client_data(cid)[1]) == a.num_examples(cid)
    assert _equal((a.test_x, a.test_y), (b.test_x, b.test_y))
    other_seed = _load(dataset, args, partitioner, num_clients=50, seed=1)
    assert not torch.equal(a.client_data(3)[0], other_seed.client_data(3)[0])
    assert not torch.equal(a.client_data(3)[0], a.client_data(4)[0])


def test_blobs_client_and_test_set_do_not_depend_on_the_population():
    small = _load("blobs", BLOBS, "iid", num_clients=10)
    large = _load("blobs", BLOBS, "iid", num_clients=10_000)
    assert _equal(small.client_data(7), large.client_data(7))
    pooled = _load("blobs", {**BLOBS, "draw": "population"}, "iid", num_clients=10)
    assert _equal((small.test_x, small.test_y), (pooled.test_x, pooled.test_y))  # the same first draws


@pytest.mark.parametrize(("dataset", "args", "partitioner"), CASES)
def test_a_cohort_holds_its_clients_whatever_else_it_holds(dataset, args, partitioner):
    """What a worker trains on: a client's rows in any cohort view equal its own draw (worker-count free)."""
    data = _load(dataset, args, partitioner, num_clients=30)
    for cids in ([5], [29, 5, 11], list(range(0, 30, 2))):
        view = data.cohort(cids)
        assert isinstance(view, FederatedData) and len(view.partitions) == 30
        assert view.train_x.shape[0] == sum(data.num_examples(c) for c in cids)
        rows = torch.from_numpy(view.partitions[5].copy()) if 5 in cids else None
        if rows is not None:
            assert _equal((view.train_x[rows], view.train_y[rows]), data.client_data(5))
        for c in cids:
            assert view.num_examples(c) == data.num_examples(c)


@pytest.mark.parametrize(("dataset", "args", "partitioner"), CASES)
def test_the_materialised_population_is_every_client_in_order(dataset, args, partitioner):
    """The pooled view (gossip's) is the clients' own draws one after another."""
    data = _load(dataset, args, partitioner, num_clients=12)
    assert np.array_equal(data.partitions.sizes(), data.sizes())
    for c in range(12):
        rows = torch.from_numpy(data.partitions[c].copy())
        assert _equal((data.train_x[rows], data.train_y[rows]), data.client_data(c))


@pytest.mark.parametrize(("dataset", "args", "partitioner"), CASES)
def test_sizes_are_the_cheap_paths_and_the_population_draws(dataset, args, partitioner):
    """Oracle: ``cheap_client_sizes`` (the DP accountant's) and the sizes of ``draw: population``."""
    kw = {"partitioner_args": {}, "test_fraction": 0.2, "num_clients": 40, "seed": 3}
    data = _load(dataset, args, partitioner, **kw)
    cheap = cheap_client_sizes(dataset=dataset, args=args, partitioner=partitioner, **kw)
    assert np.array_equal(cheap, data.sizes())
    pooled = _load(dataset, {**args, "draw": "population"}, partitioner, **kw)
    assert np.array_equal(pooled.partitions.sizes(), data.sizes())


@pytest.mark.parametrize(("dataset", "args", "partitioner"), CASES)
def test_a_partitioner_that_does_not_describe_the_clients_is_refused(dataset, args, partitioner):
    wrong = "natural" if dataset == "regression" else WRONG[partitioner]
    kw = {"partitioner_args": {}, "test_fraction": 0.2, "num_clients": 10, "seed": 0}
    assert cheap_client_sizes(dataset=dataset, args=args, partitioner=wrong, **kw) is None
    with pytest.raises(ConfigError) as info:
        _load(dataset, args, wrong)
    assert str(info.value).startswith(
        f"data.partitioner must be {partitioner} for {dataset} with draw: client"
    )


def test_a_bad_draw_names_its_field():
    with pytest.raises(ConfigError) as info:
        _load("blobs", {"draw": "lazy"}, "iid")
    assert str(info.value).startswith("data.args.draw must be one of population, client")


def test_blobs_client_draws_follow_the_mixture():
    """Oracle (the definition, as for ``draw: population``): labels uniform, x − center[y] ~ N(0, noise² I);
    the class means of 8000 examples estimate the centers, which the test set (the same draws as
    ``population``'s) shares."""
    noise = 0.5
    args = {"shape": [20], "classes": 4, "samples_per_client": 40, "noise": noise, "draw": "client"}
    data = _load("blobs", args, "iid", num_clients=200)
    view = data.cohort(range(200))
    x, y = view.train_x, view.train_y
    assert abs(float((y == 0).float().mean()) - 0.25) < 0.03  # s.e. 0.005
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    assert abs(float((x - means[y]).std()) - noise) < 0.02 * noise
    test_means = torch.stack([data.test_x[data.test_y == c].mean(0) for c in range(4)])
    assert float((means - test_means).abs().max()) < 0.5  # same centers (s.e. ~ 0.5/sqrt(10) per coordinate)


def test_synthetic_test_set_is_the_first_users_held_out_examples():
    args = {**SYNTHETIC, "samples": {"dist": "constant", "value": 10}}
    data = _load("synthetic", args, "natural", num_clients=1500, test_fraction=0.2)
    assert np.all(data.sizes() == 8)
    assert data.test_x.shape == (1000 * 2, 7)  # 1000 users (TEST_USERS) × 2 held-out examples


def test_the_client_cache_is_bounded_in_bytes():
    drawn = []

    def draw(cid):
        drawn.append(cid)
        return np.zeros((10, 10), dtype=np.float32), np.zeros(10, dtype=np.int64)  # 480 bytes

    cache = ClientCache(limit=1000)
    for cid in (1, 2, 1, 3):  # 3 evicts the least recently used (2), not 1
        cache.get(cid, draw)
    assert drawn == [1, 2, 3] and len(cache) == 2 and cache.nbytes <= 1000
    cache.get(1, draw)
    cache.get(2, draw)
    assert drawn == [1, 2, 3, 2]


_BOUNDED = """
import json, resource, sys, time
import torch
from fedsim.data import load_federated_data
def vm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
load_federated_data(dataset="blobs", args={"draw": "client"}, partitioner="iid", partitioner_args={},
                    test_fraction=0.2, num_clients=10, seed=0)  # imports and first-call costs out of the way
limit = vm() + int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
start = time.perf_counter()
data = load_federated_data(dataset="blobs", args={"shape": [784], "samples_per_client": 4, "draw": "client"},
                           partitioner="iid", partitioner_args={}, test_fraction=0.2, num_clients=10**6, seed=0)
view = data.cohort(range(0, 10**6, 10**4))
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "rows": int(view.train_x.shape[0]), "n": int(data.sizes().sum())}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_a_million_clients_build_in_seconds_within_a_small_address_space():
    """10^6 clients × 4 × 784 float32 would be 12.5 GB materialised; client-drawn, the population and a cohort
    of 100 fit in 200 MB more address space than the imports took (sizes 8 MB, cohort offsets 8 MB twice, the
    test set 3 MB, numpy/torch arenas)."""
    out = subprocess.run(
        [sys.executable, "-c", _BOUNDED, "200"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n10^6 client-drawn blobs clients: built with a cohort of 100 in {measured['wall']:.2f} s")
    assert measured["rows"] == 400 and measured["n"] == 4 * 10**6
    assert measured["wall"] < 10  # ~0.2 s on a 2-core machine


_DIGEST = """
import hashlib, json, sys
from fedsim.data import load_federated_data
cases = json.loads(sys.argv[1])
out = []
for dataset, args, partitioner in cases:
    data = load_federated_data(dataset=dataset, args=args, partitioner=partitioner, partitioner_args={},
                               test_fraction=0.2, num_clients=10, seed=0)
    x, y = data.client_data(7)
    out.append(hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
print(json.dumps(out))
"""


def test_a_client_is_the_same_in_another_process():
    """Oracle: this process's draw of client 7 (a worker process draws it alone, with nothing else drawn)."""
    out = subprocess.run(
        [sys.executable, "-c", _DIGEST, json.dumps(CASES)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    for (dataset, args, partitioner), digest in zip(CASES, theirs, strict=True):
        x, y = _load(dataset, args, partitioner).client_data(7)
        assert hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest() == digest, dataset
