"""One run on an existing Ray cluster of 1 raylet, and the same run on a cluster of 2 raylets: seconds per round.

Starts two local clusters on this machine the way a real one is started (``bench/local_cluster.py``: ``ray start
--head``, then ``ray start --address=<head>`` for the second raylet), one CPU per raylet, and runs the same
scenario with ``fedsim run`` on each (``engine.ray_address`` set, ``engine.workers: auto``): 1 worker on the
1-raylet cluster, 2 on the 2-raylet one. The runs alternate (1, 2, 2, 1, ...), so the two are measured under the
same load. Prints, per run, the workers and the median wall seconds of the rounds after the first (start-up and
first-round warm-up excluded), then the medians and their ratio, and the machine's load average before and after (other work
on the machine slows both alike, but shows how shared the cores were).

    .venv/bin/python bench/cluster_scale.py --rounds 5 --repeats 2

Raylets on ONE machine share its cores: the figure shows the mechanism (workers placed on both raylets, each
building its data from its own cache), not what a second machine would add.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_cluster import local_cluster, query  # noqa: E402


def scenario(rounds: int, address: str) -> dict:
    """Digits over 40 clients (about 45 examples each), all 40 training 5 epochs per round on a 256-256 MLP:
    enough work per round that the training, not the messages, takes the time."""
    return {
        "name": "cluster-scale",
        "seed": 1,
        "rounds": rounds,
        "data": {"dataset": "digits", "partitioner": "iid"},
        "population": {"clients": 40},
        "model": {"name": "mlp", "args": {"hidden": [256, 256]}},
        "client": {"epochs": 5, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.05}},
        "strategy": {"name": "fedavg", "clients_per_round": 40},
        "engine": {"workers": "auto", "ray_address": address},
    }


def fedsim_run(sc: dict, tmp: Path, name: str) -> tuple[str, list[dict]]:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sc))
    out = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", str(path), "--output", str(tmp / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise SystemExit(f"fedsim run failed:\n{out.stderr[-3000:]}")
    run_dir = Path(out.stdout.strip().splitlines()[-1].split("results=")[1])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return out.stderr.splitlines()[0], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="runs per cluster, alternating")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cluster-scale-"))
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; each raylet has 1 CPU; "
        f"{args.rounds} rounds per run",
        flush=True,
    )
    with ExitStack() as stack:
        clusters = {}
        for n in (1, 2):
            caches = [{"FEDSIM_CACHE_DIR": str(tmp / f"cache-{n}-{i}")} for i in range(n)]
            clusters[n] = stack.enter_context(local_cluster(n, cpus_per_node=1, node_env=caches))
        order = [n for r in range(args.repeats) for n in ((1, 2) if r % 2 == 0 else (2, 1))]
        per_round: dict[int, list[float]] = {1: [], 2: []}
        for i, n in enumerate(order):
            first, rows = fedsim_run(scenario(args.rounds, clusters[n].address), tmp, f"run{i}-{n}")
            s_round = statistics.median(r["round_wall_s"] for r in rows[1:])
            per_round[n].append(s_round)
            used = {node for node, _ in query(clusters[n].address, "actors('WorkerActor')")}
            print(
                f"{n} raylet{'s' if n > 1 else ''}: {first.split(' for ')[0]}; actors on {len(used)} raylet(s); "
                f"{s_round:.3f} s/round (median of rounds 2-{args.rounds})",
                flush=True,
            )
    one, two = statistics.median(per_round[1]), statistics.median(per_round[2])
    print(f"median s/round: 1 raylet {one:.3f}, 2 raylets {two:.3f}; 2-raylet / 1-raylet = {two / one:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
