"""Start-up time to round 1 and peak memory against the population size, client-drawn vs materialised data.

    python bench/population_scale.py                          # blobs, 10^4, 10^5, 10^6 clients, in-process
    python bench/population_scale.py --dataset synthetic      # synthetic (natural users), same sizes
    python bench/population_scale.py --clients 10000 --backend ray
    python bench/population_scale.py --clients 10000 --backend ray --repeat 5   # median of 5 warm runs each
    python bench/population_scale.py --dataset regression     # data start-up only (see below), same sizes
    python bench/population_scale.py --dataset parquet        # a parquet file of 10^4, 10^5, 10^6 rows

Each measurement is a fresh Python process (so its peak RSS is its own) that runs one round of a scenario with
``simulate`` and reports: ``import_s``, the interpreter's imports before the call; ``startup_s``, from the call
to ``simulate`` until round 1 starts (the first row's time less the run's wall time in its loop: data, model,
workers, placement, device profiles); the round's wall time; and the process's peak resident memory (``ru_maxrss``; with ``--backend ray`` the server process only). For every
population size it runs, one after another, ``draw: client`` (each client's examples drawn when its round asks
for them, ``fedsim.data.lazy``) and ``draw: population`` (the whole population materialised and written to the
data cache) twice, cold cache then warm; ``population`` is skipped where its training set would exceed
``--max-materialised-gb``. The last column is population/client start-up, measured in this run. Start-up varies
from run to run by several tenths of a second on a small machine (Ray's processes start together on few cores):
``--repeat N`` runs each warm measurement N times and reports the medians, and lists every run's start-up.

The workload is the issue's: blobs of 4 examples of 784 floats per client (synthetic: 40 examples of 784
floats per user, ``samples: {dist: constant, value: 50}`` with 20% held out), an MLP 784-64-10, a cohort of 100
clients, one round.

``--dataset regression`` and ``--dataset parquet`` measure the data start-up of one process instead of a round
(regression data train only with the full-batch strategies, every client every round): ``startup_s`` is
``fedsim.engine.setup.build_data`` (what the server and every worker run first), ``round_s`` the reading of a
cohort of 100 clients as a worker does (``fedsim.engine.worker.cohort_data``), and the peak RSS is the process's.
``regression``: 5 examples of 8 features per client (4 train, 1 to the test split, ``n = 5 · clients``).
``parquet``: the population size is the file's rows; the bench writes ``rows`` rows of 64 float32 features (one
fixed-size list column) and a label of 10 classes, in row groups of 4096, into a temporary folder, and
partitions them ``iid`` over ``rows / 10`` clients; ``client`` is ``draw: client`` (converted once into the data
cache, then read a client at a time: ``fedsim.data.mapped``), ``population`` the materialised default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def scenario(
    dataset: str, clients: int, draw: str, backend: str, files: Path | None = None
) -> dict[str, Any]:
    """The benchmark's scenario at one population size and draw mode (``parquet``: ``clients`` rows)."""
    model: dict[str, Any] = {"name": "mlp", "args": {"hidden": [64]}}
    strategy: dict[str, Any] = {"name": "fedavg", "clients_per_round": 100}
    population = clients
    if dataset == "blobs":
        data = {
            "dataset": "blobs",
            "args": {"shape": [784], "samples_per_client": 4, "test_samples": 1000, "draw": draw},
            "partitioner": "iid",
        }
    elif dataset == "synthetic":
        data = {
            "dataset": "synthetic",
            "args": {"dim": 784, "samples": {"dist": "constant", "value": 50}, "draw": draw},
            "partitioner": "natural",
            "test_fraction": 0.2,
        }
    elif dataset == "regression":
        data = {
            "dataset": "regression",
            "args": {"n": 5 * clients, "d": 8, "draw": draw},
            "partitioner": "iid",
        }
        model = {"name": "mlp", "args": {"hidden": [10], "activation": "softplus"}}
        strategy = {"name": "diff2", "clients_per_round": clients, "args": {"lr": 0.5}}
    else:
        assert files is not None
        data = {
            "dataset": f"parquet:{files / f'rows-{clients}.parquet'}",
            "args": {"x": "x", "draw": draw, "cache_dir": str(files / "hf-cache")},
            "partitioner": "iid",
        }
        population = clients // 10
    return {
        "name": f"population-{clients}",
        "rounds": 1,
        "data": data,
        "population": {"clients": population},
        "model": model,
        "client": {"epochs": 1, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.05}},
        "strategy": strategy,
        "engine": {"backend": backend},
        "evaluation": {"every": 1},
    }


PARQUET_FEATURES = 64


def write_parquet(path: Path, rows: int) -> None:
    """``rows`` rows of ``PARQUET_FEATURES`` float32 features (one fixed-size list column ``x``) and a label,
    written in row groups of 4096 (1 MB), a group at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    schema = pa.schema([("x", pa.list_(pa.float32(), PARQUET_FEATURES)), ("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 4096):
            n = min(4096, rows - start)
            x = rng.standard_normal((n, PARQUET_FEATURES), dtype=np.float32)
            label = rng.integers(0, 10, n)
            flat = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), PARQUET_FEATURES)
            writer.write_table(pa.table({"x": flat, "label": label}, schema=schema))


def materialised_gb(dataset: str, clients: int) -> float:
    """Bytes of the training set ``draw: population`` holds, in GB."""
    if dataset == "regression":
        return clients * 5 * 8 * 8 / 1e9  # float64 while generated
    if dataset == "parquet":
        return clients * PARQUET_FEATURES * 4 / 1e9
    per_client = 4 if dataset == "blobs" else 40
    return clients * per_client * 784 * 4 / 1e9


_DATA_ONLY = r"""
import time
began = time.perf_counter()
import json, resource, sys
import torch
spec = json.loads(sys.argv[1])
from fedsim.engine.setup import build_data
from fedsim.engine.worker import cohort_data
from fedsim.scenario import parse_scenario
sc = parse_scenario(spec)
start = time.perf_counter()
data = build_data(sc)
built = time.perf_counter()
clients = sc.population.clients
view = cohort_data(data, range(0, clients, max(1, clients // 100)), torch.device("cpu"))
print(json.dumps({
    "import_s": start - began,
    "startup_s": built - start,
    "round_s": time.perf_counter() - built,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "test_accuracy": None,
}))
"""


def measure(spec: dict[str, Any], cache: Path, data_only: bool = False) -> dict[str, float]:
    """Run one scenario in a fresh process; its start-up, round time and peak RSS (``data_only``: the data
    start-up and a cohort's reading, ``_DATA_ONLY``)."""
    code = (
        _DATA_ONLY
        if data_only
        else r"""
import time
began = time.perf_counter()
import json, resource, sys
spec = json.loads(sys.argv[1])
from fedsim.engine.simulation import simulate
from fedsim.scenario import parse_scenario
sc = parse_scenario(spec)
rows = []
class Recorder:
    def write_round(self, row): rows.append((time.perf_counter(), dict(row)))
    def __getattr__(self, name): return lambda *a, **k: None
start = time.perf_counter()
simulate(sc, Recorder())
at, row = rows[0]
print(json.dumps({
    "import_s": start - began,
    "startup_s": at - start - row["wall_time_s"],
    "round_s": row["round_wall_s"],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "test_accuracy": row.get("test_accuracy"),
}))
"""
    )
    env = {
        **os.environ,
        "FEDSIM_CACHE_DIR": str(cache),
        "PYTHONPATH": str(ROOT),
        "FLWR_TELEMETRY_ENABLED": "0",
        "HF_DATASETS_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def repeated(spec: dict[str, Any], cache: Path, data_only: bool, times: int) -> dict[str, Any]:
    """:func:`measure` ``times`` times, each in a fresh process: the median of each figure, and with more than one
    run every run's start-up (``startup_each_s``, in the order they ran)."""
    runs = [measure(spec, cache, data_only) for _ in range(times)]
    out: dict[str, Any] = {
        key: None if runs[0][key] is None else statistics.median(r[key] for r in runs) for key in runs[0]
    }
    if times > 1:
        out["startup_each_s"] = [r["startup_s"] for r in runs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=("blobs", "synthetic", "regression", "parquet"), default="blobs")
    parser.add_argument("--clients", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess")
    parser.add_argument("--max-materialised-gb", type=float, default=4.0)
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="run each warm measurement this many times, each in a fresh process, and report the median (the "
        "start-up of every run is listed at the end of its row)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat: expected a positive number of runs")
    data_only = args.dataset in ("regression", "parquet")
    what = "data start-up and a cohort's reading (round_s)" if data_only else "one round"
    print(f"{args.dataset}, backend {args.backend}, cohort 100, {what}; times in s, peak RSS in MB")
    size = "rows" if args.dataset == "parquet" else "clients"
    header = f"{size:>9} {'draw':<18} {'import_s':>8} {'startup_s':>9} {'round_s':>8} {'peak_rss':>9} {'accuracy':>8}"
    print(header + "   population/client start-up")
    with tempfile.TemporaryDirectory(prefix="fedsim-population-scale-") as tmp:
        for clients in args.clients:
            runs: list[tuple[str, dict[str, float]]] = []
            cache = Path(tmp) / str(clients)
            if args.dataset == "parquet":
                write_parquet(Path(tmp) / f"rows-{clients}.parquet", clients)
            spec = scenario(args.dataset, clients, "client", args.backend, Path(tmp))
            if args.dataset == "parquet":  # the first run converts the file: the next ones map it
                runs.append(("client, cold", measure(spec, cache, data_only)))
                runs.append(("client, warm", repeated(spec, cache, data_only, args.repeat)))
            else:
                runs.append(("client", repeated(spec, cache, data_only, args.repeat)))
            if materialised_gb(args.dataset, clients) <= args.max_materialised_gb:
                spec = scenario(args.dataset, clients, "population", args.backend, Path(tmp))
                runs.append(("population, cold", measure(spec, cache, data_only)))
                runs.append(("population, warm", repeated(spec, cache, data_only, args.repeat)))
            for label, r in runs:
                ratio = ""
                if label.startswith("population"):
                    ratio = f"   {r['startup_s'] / runs[0][1]['startup_s']:.1f}x"
                acc = r["test_accuracy"]
                each = r.get("startup_each_s", [])
                listed = f"   start-up of the {len(each)} runs: {' '.join(f'{x:.2f}' for x in each)}" if each else ""
                print(
                    f"{clients:>9} {label:<18} {r['import_s']:>8.2f} {r['startup_s']:>9.2f} {r['round_s']:>8.2f} "
                    f"{r['peak_rss_mb']:>9.0f} {'-' if acc is None else format(acc, '.3f'):>8}{ratio}{listed}",
                    flush=True,
                )
            if not any(label.startswith("population") for label, _ in runs):
                gb = materialised_gb(args.dataset, clients)
                print(f"{clients:>9} {'population':<18} skipped: {gb:.1f} GB of training data to materialise")


if __name__ == "__main__":
    main()
