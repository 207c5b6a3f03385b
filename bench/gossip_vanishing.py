"""The vanishing-variance reproduction and the gossip simulator's scale, on this machine (no Ray).

Runs one scenario family (scikit-learn digits, Dirichlet(0.5) label skew, an MLP with one hidden layer of 64) as
the star graph with one shared initial model (the federated-learning comparison, β = 0: the hub averages the leaves,
the leaves take the hub's model), plain gossip and variance-corrected gossip on a random 8-regular graph with
uncorrelated initial models (β = 0.5, e = 1e-4). Writes one PNG (accuracy of the average node vs ticks; mean
per-layer weight variance vs ticks) and prints a table. ``--scale N`` instead times N nodes of the quickstart
model (digits, IID partitions) on a random 8-regular graph and prints training steps per second and the peak resident memory.

    .venv/bin/python bench/gossip_vanishing.py --nodes 50 --ticks 1000
    .venv/bin/python bench/gossip_vanishing.py --scale 1000 --ticks 100

References:
    Tian, Al-Ars, Kitsak, Hofstee, "Vanishing Variance Problem in Fully Decentralized Neural-Network Systems",
    arXiv 2404.04616, 2024.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from fedsim.engine.setup import build_data
from fedsim.gossip import GossipConfig, GossipSimulator, build_topology, independent_init, neighbour_lists
from fedsim.models import build_model
from fedsim.scenario.load import parse_scenario


def scenario(nodes: int, seed: int):
    return parse_scenario(
        {
            "name": "gossip-vanishing",
            "seed": seed,
            "rounds": 1,
            "data": {
                "dataset": "digits",
                "partitioner": "dirichlet",
                "partitioner_args": {"alpha": 0.5},
                "test_fraction": 0.2,
            },
            "population": {"clients": nodes},
            "model": {"name": "mlp", "args": {"hidden": [64]}},
            "client": {"epochs": 1, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.1}},
            "strategy": {"name": "fedavg", "clients_per_round": 1},
        }
    )


def setup(nodes: int, seed: int):
    data = build_data(scenario(nodes, seed))

    def build(s: int):
        return build_model(
            "mlp", {"hidden": [64]}, input_shape=data.input_shape, num_classes=data.num_classes, seed=s
        )

    return data, build


def run_one(label: str, data, build, *, nodes: int, ticks: int, seed: int, eval_every: int) -> list[dict]:
    if label == "star (FL)":
        graph = build_topology("star", nodes=nodes, seed=seed)
        one = independent_init(build, 1, seed)
        params = {k: v.expand(nodes, *v.shape[1:]).clone() for k, v in one.items()}
        cfg = GossipConfig(rule="plain", beta=0.0, batch_size=16, eval_every=eval_every, seed=seed)
    else:
        graph = build_topology("regular", nodes=nodes, args={"k": 8}, seed=seed)
        params = independent_init(build, nodes, seed)
        rule = "plain" if label == "gossip plain" else "corrected"
        cfg = GossipConfig(rule=rule, beta=0.5, batch_size=16, eval_every=eval_every, seed=seed)
    sim = GossipSimulator(build(seed), data, neighbour_lists(graph), params, cfg)
    return sim.run(ticks)


def plot(results: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for (label, rows), color in zip(results.items(), ("k", "tab:red", "tab:blue"), strict=False):
        ticks = [r["tick"] for r in rows]
        ax1.plot(ticks, [r["test_accuracy_mean"] for r in rows], color=color, label=f"{label}: mean node")
        ax1.plot(
            ticks,
            [r["test_accuracy_avg_model"] for r in rows],
            color=color,
            ls=":",
            label=f"{label}: avg model",
        )
        for name, ls in (("layer_var/1.weight", "-"), ("layer_var/3.weight", "--")):
            ax2.plot(
                ticks, [r[name] for r in rows], color=color, ls=ls, label=f"{label}: {name.split('/')[1]}"
            )
    ax1.set(xlabel="virtual time (ticks)", ylabel="test accuracy", title="accuracy vs virtual time")
    ax2.set(xlabel="virtual time (ticks)", ylabel="weight variance (mean over nodes)", yscale="log")
    ax2.set_title("per-layer weight variance")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def reproduce(args) -> None:
    data, build = setup(args.nodes, args.seed)
    results = {}
    for label in ("star (FL)", "gossip plain", "gossip corrected"):
        t0 = time.perf_counter()
        results[label] = run_one(
            label, data, build, nodes=args.nodes, ticks=args.ticks, seed=args.seed, eval_every=args.eval_every
        )
        print(f"# {label}: {time.perf_counter() - t0:.1f} s wall", flush=True)
    plot(results, Path(args.out))
    print(f"| tick | {' | '.join(f'{k} acc (mean node / avg model) | var fc1' for k in results)} |")
    print("|---" * (1 + 2 * len(results)) + "|")
    for i, row in enumerate(next(iter(results.values()))):
        if row["tick"] % args.print_every:
            continue
        cells = []
        for rows in results.values():
            r = rows[i]
            cells.append(f"{r['test_accuracy_mean']:.3f} / {r['test_accuracy_avg_model']:.3f}")
            cells.append(f"{r['layer_var/1.weight']:.2e}")
        print(f"| {row['tick']} | {' | '.join(cells)} |")
    print(f"# wrote {args.out}")


def scale(args) -> None:
    sc = parse_scenario(__import__("yaml").safe_load(Path("scenarios/quickstart.yaml").read_text()))
    # The quickstart's model and data set; IID partitions (Dirichlet(0.5) cannot split 1438 examples over 1000).
    data_cfg = sc.data.model_copy(update={"partitioner": "iid", "partitioner_args": {}})
    population = sc.population.model_copy(update={"clients": args.scale})
    sc = sc.model_copy(update={"population": population, "data": data_cfg})
    data = build_data(sc)

    def build(s: int):
        return build_model(
            sc.model.name, sc.model.args, input_shape=data.input_shape, num_classes=data.num_classes, seed=s
        )

    graph = build_topology("regular", nodes=args.scale, args={"k": 8}, seed=args.seed)
    params = independent_init(build, args.scale, args.seed)
    cfg = GossipConfig(
        rule="corrected", batch_size=sc.client.batch_size, eval_every=args.ticks, seed=args.seed
    )
    sim = GossipSimulator(build(0), data, neighbour_lists(graph), params, cfg)
    t0 = time.perf_counter()
    rows = sim.run(args.ticks)
    wall = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = sim.counts["trained"]
    print(
        f"nodes={args.scale} ticks={args.ticks} threads={torch.get_num_threads()} wall_s={wall:.1f} "
        f"train_steps={steps} steps_per_s={steps / wall:.1f} ticks_per_s={args.ticks / wall:.2f} "
        f"merges={sim.counts['merges']} messages={sim.counts['sent']} peak_rss_mib={peak_mib:.0f} "
        f"final_acc_mean={rows[-1]['test_accuracy_mean']:.3f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--ticks", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--print-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/img/gossip_vanishing.png")
    p.add_argument("--scale", type=int, default=0, help="time this many nodes instead of the reproduction")
    args = p.parse_args()
    scale(args) if args.scale else reproduce(args)


if __name__ == "__main__":
    main()
