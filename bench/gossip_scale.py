"""Gossip learning at scale on this machine: N nodes of the quickstart model, in one process and on the engine.

Runs the same network twice, with the same protocol code (``fedsim.gossip.shard``): once in this process
(``GossipSimulator``, one shard holding every node) and once through ``fedsim run`` (Flower's simulation on Ray,
the nodes sharded over ``engine.workers`` workers, models crossing workers once per tick). Prints for each: wall
seconds of the ticks (start-up excluded), ticks/s, node training steps/s, and the peak resident memory (the whole
process tree for the engine: driver, Ray and its workers, sampled every 0.2 s); then the engine/in-process ratio.

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
import time
from pathlib import Path

import torch
import yaml

from fedsim.engine.gossip_network import build_network, initial_models
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.gossip import GossipSimulator
from fedsim.scenario.load import parse_scenario


def scenario(nodes: int, ticks: int, workers: int):
    base = yaml.safe_load(Path("scenarios/quickstart.yaml").read_text())
    base |= {
        "name": f"gossip-scale-{nodes}",
        "data": {**base["data"], "partitioner": "iid", "partitioner_args": {}},
        "population": {"clients": nodes},
        "strategy": {"name": "gossip"},
        "gossip": {"topology": {"kind": "regular", "args": {"k": 8}}, "ticks": ticks, "eval_every": ticks},
        "engine": {"workers": workers},
    }
    return parse_scenario(base)


def in_process(sc) -> dict:
    data = build_data(sc)
    model = build_initial_model(sc, data)
    net = build_network(sc, data, model)
    params = initial_models(sc, data, torch.arange(sc.population.clients).numpy())
    sim = GossipSimulator(model, data, net.neighbours, params, _config(sc), schedule=net.schedule)
    t0 = time.perf_counter()
    rows = sim.run(sc.gossip_settings.ticks)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "steps": sim.counts["trained"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "acc": rows[-1]["test_accuracy_mean"],
    }


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
    last = outcome.summary.last_row
    return {
        "wall_s": last["wall_time_s"],  # from the engine's start (workers registered) to the last evaluation
        "steps": last["trained"],
        "peak_rss_mib": peak[0] / 2**20,
        "acc": last["test_accuracy_mean"],
        "models_across_workers": last["models_across_workers"],
        "supersteps": last["supersteps"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--ticks", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    sc = scenario(args.nodes, args.ticks, args.workers)
    results = {"in-process": in_process(sc), "engine": on_engine(sc)}
    for name, r in results.items():
        extra = "".join(f" {k}={r[k]}" for k in ("supersteps", "models_across_workers") if k in r)
        print(
            f"{name}: nodes={args.nodes} ticks={args.ticks} threads={torch.get_num_threads()} wall_s={r['wall_s']:.1f} "
            f"ticks_per_s={args.ticks / r['wall_s']:.2f} steps_per_s={r['steps'] / r['wall_s']:.1f} "
            f"train_steps={r['steps']} peak_rss_mib={r['peak_rss_mib']:.0f} acc_mean={r['acc']:.3f}{extra}"
        )
    ratio = results["engine"]["wall_s"] / results["in-process"]["wall_s"]
    print(f"engine / in-process wall ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
