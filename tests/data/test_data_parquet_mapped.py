"""``parquet:<path>`` with ``data.args.draw: client``: the train split's features converted once into the data
cache and read back a client at a time (``fedsim.data.mapped``).

Oracle throughout: the materialised path (``draw: population``) on the same file. Every client holds the same
rows in the same order and the test sets are equal; another process opens the cached copy without ``datasets``;
the build and a cohort cost a fraction of the materialised path's peak memory; bad input stays one
``ConfigError`` line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_helpers import load, write_image_parquets

from fedsim.data import LazyFederatedData
from fedsim.data.sizes import cheap_client_sizes, client_sizes
from fedsim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(tmp_path / "fedsim-cache"))


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> Path:
    """900 rows in row groups of 100: two numeric features, a string label (3 classes), a user id (6 users)."""
    rng = np.random.default_rng(0)
    n = 900
    path = tmp_path_factory.mktemp("tab") / "rows.parquet"
    table = pa.table(
        {
            "f1": rng.normal(size=n),
            "f2": np.arange(n, dtype=np.int64),
            "label": np.array(["cat", "dog", "eel"])[np.arange(n) % 3],
            "user": np.arange(n) % 6,
        }
    )
    pq.write_table(table, path, row_group_size=100)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    """Gray 6x5 images with ClassLabel labels: a train file (60 rows) and a test file (20 rows)."""
    return write_image_parquets(tmp_path_factory.mktemp("img"))


def _both(path, tmp_path, *, args=None, **kw):
    args = {"cache_dir": str(tmp_path / "hf-cache"), **(args or {})}
    pooled = load(dataset=f"parquet:{path}", args=args, **kw)
    mapped = load(dataset=f"parquet:{path}", args={**args, "draw": "client"}, **kw)
    return pooled, mapped


def _assert_same(pooled, mapped):
    assert isinstance(mapped, LazyFederatedData)
    assert mapped.input_shape == pooled.input_shape and mapped.num_classes == pooled.num_classes
    assert torch.equal(mapped.test_x, pooled.test_x) and torch.equal(mapped.test_y, pooled.test_y)
    assert np.array_equal(mapped.sizes(), pooled.partitions.sizes())
    for cid in range(len(pooled.partitions)):
        for a, b in zip(mapped.client_data(cid), pooled.client_data(cid), strict=True):
            assert torch.equal(a, b), cid


@pytest.mark.parametrize(
    ("partitioner", "partitioner_args", "args", "clients"),
    [
        ("iid", {}, {}, 10),
        ("dirichlet", {"alpha": 0.5}, {"x": ["f1", "f2"]}, 7),
        ("shard", {}, {}, 9),
        ("natural", {}, {"user": "user"}, 6),
    ],
)
def test_every_client_holds_the_materialised_paths_rows(
    tabular, tmp_path, partitioner, partitioner_args, args, clients
):
    pooled, mapped = _both(
        tabular,
        tmp_path,
        args=args,
        partitioner=partitioner,
        partitioner_args=partitioner_args,
        num_clients=clients,
        seed=4,
    )
    _assert_same(pooled, mapped)
    view = mapped.cohort([clients - 1, 0])  # what a worker trains on
    rows = torch.from_numpy(view.partitions[0].copy())
    assert torch.equal(view.train_x[rows], pooled.client_data(0)[0])


@pytest.mark.parametrize(("partitioner", "args"), [("iid", {}), ("natural", {"user": "user"})])
def test_hf_streams_its_arrow_files_into_the_same_clients(tabular, tmp_path, partitioner, args):
    """``hf:`` converts from the Arrow files ``datasets`` made (not from parquet row groups, as ``parquet:``): a
    local dataset folder loads offline through the same ``hf:`` path as a Hub name."""
    folder = tmp_path / "hub-like"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(tabular.read_bytes())
    common = {"cache_dir": str(tmp_path / "hf-cache"), **args}
    kw = {"partitioner": partitioner, "num_clients": 6, "seed": 2}
    pooled = load(dataset=f"hf:{folder}", args=common, **kw)
    mapped = load(dataset=f"hf:{folder}", args={**common, "draw": "client"}, **kw)
    _assert_same(pooled, mapped)


def test_images_with_a_test_file(images, tmp_path):
    train, test = images
    pooled, mapped = _both(train, tmp_path, args={"test_path": str(test)}, num_clients=3)
    assert mapped.input_shape == (1, 6, 5) and len(mapped.test_y) == 20
    _assert_same(pooled, mapped)


def test_sizes_for_the_accountant_come_without_materialising(tabular, tmp_path):
    class Data:
        dataset = f"parquet:{tabular}"
        args = {"cache_dir": str(tmp_path / "hf-cache"), "draw": "client"}
        partitioner, partitioner_args, test_fraction = "dirichlet", {"alpha": 1.0}, 0.2

    class Scenario:
        data, seed = Data, 0

        class population:  # noqa: N801 - the scenario's field name
            clients = 5

    pooled, mapped = _both(
        tabular, tmp_path, partitioner="dirichlet", partitioner_args={"alpha": 1.0}, num_clients=5
    )
    assert (
        cheap_client_sizes(
            dataset=Data.dataset,
            args=Data.args,
            partitioner="dirichlet",
            partitioner_args={"alpha": 1.0},
            test_fraction=0.2,
            num_clients=5,
            seed=0,
        )
        is None
    )  # a file's sizes need its labels: built (here: mapped)
    assert np.array_equal(client_sizes(Scenario), pooled.partitions.sizes())
    assert "_materialized" not in vars(mapped)


_OPEN = """
import hashlib, json, sys
for name in ("datasets", "flwr_datasets"):
    sys.modules[name] = None  # opening the cached copy must not need them
from fedsim.data import load_federated_data
d = load_federated_data(dataset=sys.argv[1], args=json.loads(sys.argv[2]), partitioner="iid", partitioner_args={},
                        test_fraction=0.2, num_clients=10, seed=0)
x, y = d.client_data(7)
print(hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes() + d.test_x.numpy().tobytes()).hexdigest())
"""


def test_another_process_opens_the_cached_copy_without_datasets(tabular, tmp_path):
    args = {"cache_dir": str(tmp_path / "hf-cache"), "draw": "client"}
    data = load(dataset=f"parquet:{tabular}", args=args)
    x, y = data.client_data(7)
    mine = hashlib.sha256(
        x.numpy().tobytes() + y.numpy().tobytes() + data.test_x.numpy().tobytes()
    ).hexdigest()
    out = subprocess.run(
        [sys.executable, "-c", _OPEN, f"parquet:{tabular}", json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == mine


def test_a_changed_file_is_converted_again(tmp_path):
    path = tmp_path / "small.parquet"
    args = {"cache_dir": str(tmp_path / "hf-cache"), "draw": "client"}
    for value in (1.0, 2.0):
        pq.write_table(pa.table({"f": np.full(40, value), "label": np.arange(40) % 2}), path)
        os.utime(path, ns=(int(value) * 10**9, int(value) * 10**9))  # a new mtime even within a clock tick
        data = load(dataset=f"parquet:{path}", args=args, num_clients=4)
        assert float(data.client_data(0)[0][0, 0]) == value


def test_bad_input_is_one_config_error_line(tabular, tmp_path):
    args = {"cache_dir": str(tmp_path / "hf-cache"), "draw": "client"}
    cases = [
        (tmp_path / "missing.parquet", {}, "data.dataset", "the path of an existing parquet file"),
        (tabular, {"y": "target"}, "data.args.y", "a column of"),
        (tabular, {"user": "who"}, "data.args.user", "a column of"),
        (tabular, {"x": ["f1", "nope"]}, "data.args.x", "columns of the dataset"),
    ]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not a parquet file PAR1")
    cases.append((broken, {}, "data.dataset", "a dataset that can be loaded"))
    for path, extra, field, words in cases:
        with pytest.raises(ConfigError) as info:
            load(dataset=f"parquet:{path}", args={**args, **extra})
        message = str(info.value)
        assert info.value.field == field and words in message and "\n" not in message, message


_PEAK = """
import json, sys
import datasets, flwr_datasets, torch  # the libraries' own memory is not the data's
from fedsim.data import load_federated_data
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) * 1024
args = json.loads(sys.argv[2])
load_federated_data(dataset=sys.argv[3], args=args, partitioner="iid", partitioner_args={}, test_fraction=0.2,
                    num_clients=10, seed=0)  # a small file first: imports and first-call costs out of the way
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident size: the imports' transients are not counted
base = status("VmRSS:")
d = load_federated_data(dataset=sys.argv[1], args=args, partitioner="iid", partitioner_args={}, test_fraction=0.2,
                        num_clients=1000, seed=0)
rows = sum(len(d.client_data(c)[1]) for c in range(0, 1000, 10))  # a cohort of 100
print(json.dumps({"grew": status("VmHWM:") - base, "rows": rows}))
"""


def _peak(path: Path, small: Path, args: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, f"parquet:{path}", json.dumps(args), f"parquet:{small}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resets the peak through /proc")
def test_memory_grows_with_the_cohort_not_the_file(tmp_path):
    """25 000 rows of 1024 float32 features (98 MiB): materialised, the train split alone would hold 78 MiB (the
    build measured 300 MiB of peak growth when this test ran it too; left out to keep the test short). Mapped, the
    build grows by less than a third of the features, and a process that opens the cached copy and reads a cohort
    of 100 clients (2 000 rows, 8 MiB) by a few MiB more."""
    n, d = 25_000, 1024
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, d), dtype=np.float32)
    path = tmp_path / "big.parquet"
    table = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), d),
            "label": rng.integers(0, 10, n),
        }
    )
    pq.write_table(table, path, row_group_size=256)
    small = tmp_path / "small.parquet"
    pq.write_table(table.slice(0, 100), small)
    del features, table
    args = {"x": "x", "cache_dir": str(tmp_path / "hf-cache")}
    mb = 2**20
    built = _peak(path, small, {**args, "draw": "client"})
    opened = _peak(path, small, {**args, "draw": "client"})
    print(
        f"\npeak growth, MiB: mapped build {built['grew'] / mb:.0f}, "
        f"mapped open + cohort {opened['grew'] / mb:.0f} (features {n * d * 4 / mb:.0f})"
    )
    assert built["rows"] == opened["rows"] > 1900  # ~20 rows a client
    assert built["grew"] < n * d * 4 / 3
    assert opened["grew"] < 24 * mb


def test_with_the_cache_off_a_private_copy_is_read_and_removed(tabular, tmp_path, monkeypatch):
    pooled = load(dataset=f"parquet:{tabular}", args={"cache_dir": str(tmp_path / "hf-cache")})
    monkeypatch.setenv("FEDSIM_DATA_CACHE", "0")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    mapped = load(
        dataset=f"parquet:{tabular}", args={"cache_dir": str(tmp_path / "hf-cache"), "draw": "client"}
    )
    _assert_same(pooled, mapped)
    assert not any((tmp_path / "tmp").iterdir())  # the copy's folder is gone; its open files still read
    assert not (tmp_path / "fedsim-cache").exists()
