"""fedsim's engine against stock Flower (one SuperNode per client) and the in-process floor, on one workload.

    python bench/engine_vs_flower.py                     # CPU workload at 100 and 1000 clients/round
    python bench/engine_vs_flower.py --workload gpu      # simple_cnn, 1000 clients/round (needs a GPU)

For each cohort size it runs, in this one process and on the same scenario:
  (a) stock Flower: ``flwr.simulation.run_simulation`` with one SuperNode per logical client, Flower's own
      ``FedAvg`` (``flwr.serverapp.strategy``), a ClientApp that trains its one client with fedsim's sequential
      local trainer (the same code fedsim's sequential path runs);
  (b) fedsim: ``fedsim.engine.simulation.simulate`` (Ray workers, one message per worker per round);
  (c) the floor: the same round's clients trained in this process, vectorised (``train_cohort_vectorized``), and
      one after another (``train_cohort_sequential``), with no Flower or Ray at all;
and prints seconds per round (median over rounds after the first, which pays for warm-up), the ratios, fedsim's
start-up time, and where a fedsim round's wall time goes (dispatch, training, aggregation, evaluation).
Results are also written as JSON (``--out``). Recorded numbers: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.engine.cohort import train_cohort_sequential  # noqa: E402
from fedsim.engine.memory import memory_budget_bytes  # noqa: E402
from fedsim.engine.messages import train_config  # noqa: E402
from fedsim.engine.rounds import client_seed  # noqa: E402
from fedsim.engine.setup import build_data, build_initial_model  # noqa: E402
from fedsim.engine.vectorized import train_cohort_vectorized  # noqa: E402
from fedsim.engine.worker import training_device  # noqa: E402
from fedsim.protocol import ClientTask  # noqa: E402
from fedsim.scenario import Scenario, parse_scenario  # noqa: E402

WORKLOADS: dict[str, dict[str, Any]] = {
    # The reference CPU shape: MLP 784-64-10, 32 samples per client, 4 SGD steps of batch 8, 10 000 clients.
    "cpu": {
        "population": 10_000,
        "data": {"shape": [784], "samples_per_client": 32},
        "model": {"name": "mlp", "args": {"hidden": [64]}},
        "client": {"epochs": 1, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.05}},
    },
    # pfl-research's CIFAR-10 shape: simple_cnn (1.63 M parameters), 50 samples, 5 steps of batch 10.
    "gpu": {
        "population": 1_000,
        "data": {"shape": [3, 32, 32], "samples_per_client": 50},
        "model": {"name": "simple_cnn", "args": {}},
        "client": {"epochs": 1, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05}},
    },
}


def make_scenario(workload: str, clients_per_round: int, rounds: int, args: argparse.Namespace) -> Scenario:
    w = WORKLOADS[workload]
    population = args.population or w["population"]
    engine: dict[str, Any] = {"workers": args.workers, "vectorize": "on"}
    if workload == "gpu":
        engine |= {"device": getattr(args, "device", "cuda"), "gpus_per_worker": args.gpus_per_worker}
    raw = {
        "name": f"bench-{workload}-{clients_per_round}",
        "seed": 0,
        "rounds": rounds,
        "data": {
            "dataset": "blobs",
            "args": {**w["data"], "test_samples": 1000},
            "partitioner": "iid",
            "partitioner_args": {},
        },
        "population": {"clients": population},
        "model": w["model"],
        "client": w["client"],
        "strategy": {"name": "fedavg", "clients_per_round": clients_per_round},
        "engine": engine,
        "evaluation": {"every": rounds},
    }
    return parse_scenario(raw, source=f"bench:{workload}")


class _Rows:
    """A recorder that keeps the rows in memory (no results folder)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.marks: list[float] = []

    def write_round(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        self.marks.append(time.perf_counter())

    def save_checkpoint(self, **_: Any) -> None:
        pass


def steady(values: list[float]) -> float:
    """Median after the first round (which pays for warm-up), or the only value."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def run_fedsim(scenario: Scenario) -> dict[str, Any]:
    from fedsim.engine.simulation import simulate

    rec = _Rows()
    cache = tempfile.mkdtemp(prefix="fedsim-bench-cache-")
    os.environ["FEDSIM_CACHE_DIR"] = cache  # a cold data cache: start-up includes building the data once
    try:
        start = time.perf_counter()
        simulate(scenario, rec)
        total = time.perf_counter() - start
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    per_round = steady([r["round_wall_s"] for r in rec.rows])
    parts = {
        k: steady([r[k] for r in rec.rows]) for k in ("time_dispatch_s", "time_train_s", "time_aggregate_s")
    }
    first_round_end = rec.marks[0] - start
    return {
        "s_per_round": per_round,
        # Ray, workers, data (cold cache) and model, first-call warm-up: all but one steady round before round 1 ends
        "startup_s": first_round_end - per_round,
        "total_s": total,
        "breakdown": parts | {"time_eval_s": rec.rows[-1]["time_eval_s"]},
        "rounds": [r["round_wall_s"] for r in rec.rows],
        "test_accuracy": rec.rows[-1].get("test_accuracy"),
    }


def prepared_round(scenario: Scenario) -> tuple[Any, ...]:
    """Model, global weights, one round's client tasks, data on the device, train config, and a sync function."""
    device = training_device(scenario.engine.device)
    data = build_data(scenario)
    data = dataclasses.replace(data, train_x=data.train_x.to(device), train_y=data.train_y.to(device))
    model = build_initial_model(scenario, data).to(device)
    theta = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    cids = sorted(rng.choice(scenario.population.clients, scenario.strategy.clients_per_round, replace=False))
    tasks = [ClientTask(int(c), client_seed(0, 1, int(c))) for c in cids]
    budget = memory_budget_bytes(scenario.engine.memory_budget_mb, device, scenario.engine.gpus_per_worker)
    cfg = dataclasses.replace(train_config(scenario), memory_budget_bytes=budget)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return model, theta, tasks, data, cfg, sync


def run_floor(scenario: Scenario, reps: int) -> dict[str, Any]:
    """One round's clients trained in this process: vectorised, and one after another."""
    model, theta, tasks, data, cfg, sync = prepared_round(scenario)

    def timed(fn: Any, tasks: list[ClientTask]) -> float:
        sync()
        t = time.perf_counter()
        fn(model, theta, tasks, data, cfg)
        sync()
        return time.perf_counter() - t

    timed(train_cohort_vectorized, tasks[: min(len(tasks), 16)])  # warm-up (kernels, allocator)
    vec = statistics.median(timed(train_cohort_vectorized, tasks) for _ in range(reps))
    few = tasks[: min(len(tasks), 100)]  # sequential is slow: time 100 clients and scale
    seq = statistics.median(timed(train_cohort_sequential, few) for _ in range(max(1, reps // 2)))
    return {
        "vectorized_s": vec,
        "sequential_s": seq * len(tasks) / len(few),
        "sequential_clients_timed": len(few),
    }


# ---- stock Flower: one SuperNode per logical client -------------------------------------------------------


@lru_cache(maxsize=1)
def _flower_env(scenario_json: str) -> tuple[Any, Any, torch.device]:
    sc = parse_scenario(json.loads(scenario_json), source="bench")
    device = training_device(sc.engine.device)
    data = build_data(sc)
    return data, build_initial_model(sc, data).to(device), device


def run_stock_flower(scenario: Scenario, rounds: int) -> dict[str, Any]:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from clients.local_sgd import train_local
    from fedsim.engine.simulation import quiet_flower

    scenario_json = json.dumps(scenario.model_dump(mode="json"), sort_keys=True)
    cfg = train_config(scenario)
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        data, model, device = _flower_env(scenario_json)
        cid = int(context.node_config["partition-id"])
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = (t.to(device) for t in data.client_data(cid))
        result = train_local(
            model, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
            optimizer_args=cfg.optimizer_args, generator=torch.Generator().manual_seed(cid),
        )  # fmt: skip
        reply = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord(
                    {"num-examples": result.num_examples, "train_loss": result.mean_loss}
                ),
            }
        )
        return Message(content=reply, reply_to=msg)

    marks: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        _, model, _ = _flower_env(scenario_json)
        strategy = FedAvg(
            fraction_train=scenario.strategy.clients_per_round / scenario.population.clients,
            min_train_nodes=scenario.strategy.clients_per_round,
            min_available_nodes=scenario.strategy.clients_per_round,
            fraction_evaluate=0.0,
        )

        def mark(server_round: int, arrays: ArrayRecord) -> None:
            marks.append(time.perf_counter())  # called before round 1 and after every round

        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds,
            evaluate_fn=mark,
        )

    workers = scenario.engine.workers if scenario.engine.workers != "auto" else os.cpu_count() or 1
    gpus = scenario.engine.gpus_per_worker
    resources = {"num_cpus": max(1, (os.cpu_count() or 1) // int(workers)), "num_gpus": gpus}
    start = time.perf_counter()
    with quiet_flower():
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=scenario.population.clients,
            backend_config={
                "client_resources": resources,
                "init_args": {"logging_level": 40, "log_to_driver": False},
            },
        )
    total = time.perf_counter() - start
    rounds_s = [b - a for a, b in zip(marks[:-1], marks[1:], strict=False)]
    if not rounds_s:
        raise RuntimeError("stock Flower finished no round (see the log above)")
    per_round = steady(rounds_s)
    startup = marks[1] - start - per_round  # as for fedsim: all but one steady round before round 1 ends
    return {"s_per_round": per_round, "rounds": rounds_s, "startup_s": startup, "total_s": total}


def run_arm(arm: str, clients_per_round: int, argv: list[str]) -> dict[str, Any]:
    """Run one arm in a fresh Python process (each starts and stops its own Ray) and return its result."""
    keep: list[str] = []
    skip_next = False
    for a in argv:  # drop the parent's cohort list and outputs; the child gets one cohort size
        if skip_next and not a.startswith("--"):
            continue
        skip_next = a in ("--clients-per-round", "--out", "--skip")
        if not skip_next:
            keep.append(a)
    cmd = [sys.executable, __file__, *keep, "--arm", arm, "--clients-per-round", str(clients_per_round)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        sys.exit(f"bench: error: the {arm} arm failed at {clients_per_round} clients/round (output above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="cpu")
    parser.add_argument("--clients-per-round", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=4, help="fedsim rounds (median over all but the first)")
    parser.add_argument("--flower-rounds", type=int, default=2, help="stock Flower rounds (slow: keep small)")
    parser.add_argument("--population", type=int, default=None, help="override the workload's population")
    parser.add_argument(
        "--workers", type=int, default=None, help="fedsim workers (default: engine.workers auto)"
    )
    parser.add_argument("--gpus-per-worker", type=float, default=0.5, help="GPU workload: share per worker")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="GPU workload's device (cpu: a smoke run only)",
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the in-process floor (median)")
    parser.add_argument("--skip", choices=["flower", "fedsim", "floor"], nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--arm", choices=["floor", "fedsim", "flower"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workers = args.workers or "auto"
    if args.arm:  # one measurement in this (fresh) process; the parent reads the last line
        (k,) = args.clients_per_round
        sc = make_scenario(args.workload, k, args.rounds, args)
        arms = {
            "floor": lambda: run_floor(sc, args.reps),
            "fedsim": lambda: run_fedsim(sc),
            "flower": lambda: run_stock_flower(sc, args.flower_rounds),
        }
        print(json.dumps(arms[args.arm]()))
        return
    if args.workload == "gpu" and args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench: error: --workload gpu needs a CUDA GPU (none visible); the CPU workload is the default"
        )
    sizes = args.clients_per_round or ([100, 1000] if args.workload == "cpu" else [1000])

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }
    print(f"# bench/engine_vs_flower.py --workload {args.workload}  ({json.dumps(env)})", flush=True)
    results = {"env": env, "workload": args.workload, "runs": []}
    for k in sizes:
        sc = make_scenario(args.workload, k, args.rounds, args)
        entry: dict[str, Any] = {"clients_per_round": k, "population": sc.population.clients}
        for arm, label in (("floor", "in-process floor"), ("fedsim", "fedsim"), ("flower", "stock Flower")):
            if arm not in args.skip:
                entry[arm] = run_arm(arm, k, sys.argv[1:])
                print(f"[{k}/round] {label}: {json.dumps(entry[arm])}", flush=True)
        results["runs"].append(entry)

    print()
    print(
        "| clients/round | stock Flower s/round | fedsim s/round | vectorised floor s/round | sequential in-process "
        "s/round | Flower ÷ fedsim | fedsim ÷ floor | fedsim ms/client | fedsim start-up s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for e in results["runs"]:
        fl = e.get("flower", {}).get("s_per_round")
        fs = e.get("fedsim", {}).get("s_per_round")
        vf = e.get("floor", {}).get("vectorized_s")
        sq = e.get("floor", {}).get("sequential_s")
        cells = [
            f"{e['clients_per_round']}",
            f"{fl:.2f}" if fl else "-",
            f"{fs:.3f}" if fs else "-",
            f"{vf:.3f}" if vf else "-",
            f"{sq:.2f}" if sq else "-",
            f"{fl / fs:.1f}×" if fl and fs else "-",
            f"{fs / vf:.2f}×" if fs and vf else "-",
            f"{1000 * fs / e['clients_per_round']:.3f}" if fs else "-",
            f"{e['fedsim']['startup_s']:.1f}" if fs else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    for e in results["runs"]:
        if "fedsim" in e:
            parts = ", ".join(
                f"{k.removeprefix('time_').removesuffix('_s')} {v:.3f} s"
                for k, v in e["fedsim"]["breakdown"].items()
            )
            print(f"fedsim round at {e['clients_per_round']}/round: {parts} (eval: last round only)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
