"""Start-up time to round 1 and peak memory against the population size, client-drawn vs materialised data.

    python bench/population_scale.py                          # blobs, 10^4, 10^5, 10^6 clients, in-process
    python bench/population_scale.py --dataset synthetic      # synthetic (natural users), same sizes
    python bench/population_scale.py --clients 10000 --backend ray

Each measurement is a fresh Python process (so its peak RSS is its own) that runs one round of a scenario with
``simulate`` and reports: ``import_s``, the interpreter's imports before the call; ``startup_s``, from the call
to ``simulate`` until round 1 starts (the first row's time less the run's wall time in its loop: data, model,
workers, placement, device profiles); the round's wall time; and the process's peak resident memory (``ru_maxrss``; with ``--backend ray`` the server process only). For every
population size it runs, one after another, ``draw: client`` (each client's examples drawn when its round asks
for them, ``fedsim.data.lazy``) and ``draw: population`` (the whole population materialised and written to the
data cache) twice, cold cache then warm; ``population`` is skipped where its training set would exceed
``--max-materialised-gb``. The last column is population/client start-up, measured in this run.

The workload is the issue's: blobs of 4 examples of 784 floats per client (synthetic: 40 examples of 784
floats per user, ``samples: {dist: constant, value: 50}`` with 20% held out), an MLP 784-64-10, a cohort of 100
clients, one round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def scenario(dataset: str, clients: int, draw: str, backend: str) -> dict[str, Any]:
    """The benchmark's scenario at one population size and draw mode."""
    if dataset == "blobs":
        data = {
            "dataset": "blobs",
            "args": {"shape": [784], "samples_per_client": 4, "test_samples": 1000, "draw": draw},
            "partitioner": "iid",
        }
    else:
        data = {
            "dataset": "synthetic",
            "args": {"dim": 784, "samples": {"dist": "constant", "value": 50}, "draw": draw},
            "partitioner": "natural",
            "test_fraction": 0.2,
        }
    return {
        "name": f"population-{clients}",
        "rounds": 1,
        "data": data,
        "population": {"clients": clients},
        "model": {"name": "mlp", "args": {"hidden": [64]}},
        "client": {"epochs": 1, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.05}},
        "strategy": {"name": "fedavg", "clients_per_round": 100},
        "engine": {"backend": backend},
        "evaluation": {"every": 1},
    }


def materialised_gb(dataset: str, clients: int) -> float:
    """Bytes of the training set ``draw: population`` holds, in GB."""
    per_client = 4 if dataset == "blobs" else 40
    return clients * per_client * 784 * 4 / 1e9


def measure(spec: dict[str, Any], cache: Path) -> dict[str, float]:
    """Run one scenario in a fresh process; its start-up, round time and peak RSS."""
    code = r"""
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
    env = {
        **os.environ,
        "FEDSIM_CACHE_DIR": str(cache),
        "PYTHONPATH": str(ROOT),
        "FLWR_TELEMETRY_ENABLED": "0",
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=("blobs", "synthetic"), default="blobs")
    parser.add_argument("--clients", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess")
    parser.add_argument("--max-materialised-gb", type=float, default=4.0)
    args = parser.parse_args()
    print(f"{args.dataset}, backend {args.backend}, cohort 100, one round; times in s, peak RSS in MB")
    header = f"{'clients':>9} {'draw':<18} {'import_s':>8} {'startup_s':>9} {'round_s':>8} {'peak_rss':>9} {'accuracy':>8}"
    print(header + "   population/client start-up")
    with tempfile.TemporaryDirectory(prefix="fedsim-population-scale-") as tmp:
        for clients in args.clients:
            runs: list[tuple[str, dict[str, float]]] = []
            cache = Path(tmp) / str(clients)
            runs.append(("client", measure(scenario(args.dataset, clients, "client", args.backend), cache)))
            if materialised_gb(args.dataset, clients) <= args.max_materialised_gb:
                spec = scenario(args.dataset, clients, "population", args.backend)
                runs.append(("population, cold", measure(spec, cache)))
                runs.append(("population, warm", measure(spec, cache)))
            for label, r in runs:
                ratio = ""
                if label.startswith("population"):
                    ratio = f"   {r['startup_s'] / runs[0][1]['startup_s']:.1f}x"
                acc = r["test_accuracy"]
                print(
                    f"{clients:>9} {label:<18} {r['import_s']:>8.2f} {r['startup_s']:>9.2f} {r['round_s']:>8.2f} "
                    f"{r['peak_rss_mb']:>9.0f} {acc if acc is None else format(acc, '.3f'):>8}{ratio}",
                    flush=True,
                )
            if len(runs) == 1:
                gb = materialised_gb(args.dataset, clients)
                print(f"{clients:>9} {'population':<18} skipped: {gb:.1f} GB of training data to materialise")


if __name__ == "__main__":
    main()
