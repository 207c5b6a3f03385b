"""Gossip learning at scale on this machine: N nodes of the quickstart model, in one process and on the engine.

Runs the same network with the same protocol code (``fedsim.gossip.shard``): in this process (``GossipSimulator``,
one shard holding every node), then through ``fedsim run`` on the engine's in-process backend and on Ray
(Flower's simulation; the nodes sharded over ``--workers`` workers, models crossing workers once per tick), then in
this process again (the machine's load changes; the in-process rate is the mean of the two). Prints for each: wall
seconds of ticks 1..N and the last evaluation (tick 0, start-up and the first evaluation excluded alike), ticks/s,
node training steps/s, the peak resident memory (the whole process tree for the engine: driver, Ray and its
workers, sampled every 0.2 s), and each engine run's rate over the in-process rate.

    .venv/bin/python bench/gossip_scale.py --nodes 1000 --ticks 100

The quickstart model (MLP 64→64→10) and data set (digits, IID partitions: 1438 examples over 1000 nodes), a
random 8-regular graph, variance-corrected push gossip, one mini-batch of 8 per event every 8–12 ticks.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
from pathlib import Path

import torch
import yaml

from fedsim.engine.gossip_network import build_network, initial_models
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.gossip import GossipSimulator
from fedsim.scenario.load import parse_scenario


def scenario(nodes: int, ticks: int, workers: int, backend: str = "auto"):
    base = yaml.safe_load(Path("scenarios/quickstart.yaml").read_text())
    base |= {
        "name": f"gossip-scale-{nodes}",
        "data": {**base["data"], "partitioner": "iid", "partitioner_args": {}},
        "population": {"clients": nodes},
        "strategy": {"name": "gossip"},
        "gossip": {"topology": {"kind": "regular", "args": {"k": 8}}, "ticks": ticks, "eval_every": ticks},
        "engine": {"workers": workers, "backend": backend},
    }
    return parse_scenario(base)


def in_process(sc) -> dict:
    data = build_data(sc)
    model = build_initial_model(sc, data)
    net = build_network(sc, data, model)
    params = initial_models(sc, data, torch.arange(sc.population.clients).numpy())
    sim = GossipSimulator(model, data, net.neighbours, params, _config(sc), schedule=net.schedule)
    rows = sim.run(sc.gossip_settings.ticks)
    return {
        **_timed(rows),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "acc": rows[-1]["test_accuracy_mean"],
    }


def _timed(rows) -> dict:
    """Wall seconds and training steps from the tick-0 row to the last (both runners time rows the same way:
    ``wall_time_s`` after each evaluation)."""
    first, last = rows[0], rows[-1]
    return {"wall_s": last["wall_time_s"] - first["wall_time_s"], "steps": last["trained"] - first["trained"]}


def _config(sc):
    from fedsim.gossip import GossipConfig

    g = sc.gossip_settings
    opt = sc.client.optimizer
    return GossipConfig(
        rule=g.rule, beta=g.beta, eps=g.eps, mode=g.mode, unit=g.unit, optimizer=opt.name,
        optimizer_args=opt.kwargs(), batch_size=sc.client.batch_size, timeout=g.timeout, eval_every=g.eval_every,
        seed=sc.seed,
    )  # fmt: skip


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants, from /proc (Linux)."""
    parent, rss = {}, {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(d.name)] = int((d / "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss.get(p, 0) for p in tree)


def on_engine(sc) -> dict:
    from fedsim.run import run_scenario

    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_bytes(os.getpid()))
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory() as out:
        outcome = run_scenario(sc, output_root=out, show_progress=False)
    stop.set()
    thread.join()
    last = outcome.rows[-1]
    return {
        **_timed(outcome.rows),
        "peak_rss_mib": peak[0] / 2**20,
        "acc": last["test_accuracy_mean"],
        "supersteps": last["supersteps"],
        "models_across_workers": last["models_across_workers"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--ticks", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the in-process runs (the engine's workers use 1)",
    )
    args = p.parse_args()
    ticks = args.ticks
    torch.set_num_threads(args.threads)
    runs = [
        ("in-process", lambda: in_process(scenario(args.nodes, ticks, args.workers))),
        ("engine inprocess", lambda: on_engine(scenario(args.nodes, ticks, args.workers, "inprocess"))),
        ("engine ray", lambda: on_engine(scenario(args.nodes, ticks, args.workers, "ray"))),
        ("in-process", lambda: in_process(scenario(args.nodes, ticks, args.workers))),
    ]
    results = []
    for name, fn in runs:
        r = fn()
        results.append((name, r))
        extra = "".join(f" {k}={r[k]}" for k in ("supersteps", "models_across_workers") if k in r)
        how = f"workers={args.workers}" if name.startswith("engine") else f"threads={torch.get_num_threads()}"
        print(
            f"{name}: nodes={args.nodes} ticks={ticks} {how} "
            f"wall_s={r['wall_s']:.1f} ticks_per_s={ticks / r['wall_s']:.2f} "
            f"steps_per_s={r['steps'] / r['wall_s']:.1f} train_steps={r['steps']} "
            f"peak_rss_mib={r['peak_rss_mib']:.0f} acc_mean={r['acc']:.3f}{extra}",
            flush=True,
        )
    base = [r["steps"] / r["wall_s"] for name, r in results if name == "in-process"]
    rate = sum(base) / len(base)
    for name, r in results:
        if name.startswith("engine"):
            print(
                f"{name} / in-process rate: {r['steps'] / r['wall_s'] / rate:.2f} (in-process: {rate:.1f} steps/s)"
            )


if __name__ == "__main__":
    main()
