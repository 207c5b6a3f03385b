"""Synchronous FedAvg against async FedAvg, FedFix-{0.2,0.5,0.8} and FedBuff-{5,10} on the virtual clock.

    python bench/async_compare.py                    # M = 20 and M = 50, scenarios/async-cifar-like.yaml
    python bench/async_compare.py --clients 20       # one population size

For each M, the base scenario is run once per strategy (same data per client on average, the same F-80 profile,
the same virtual-time horizon), then ``fedsim.compare`` draws test accuracy and loss against virtual time in one
PNG per M and prints the table (``runs/async-compare/M<M>/compare.{png,md}``). Recorded output: ``docs/async.md``.
Each arm evaluates about 150 times (every server step for the slow schemes, every few for async FedAvg).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.compare import load_run, table, write_comparison  # noqa: E402
from fedsim.run import run_scenario  # noqa: E402
from fedsim.scenario import load_scenario, parse_scenario  # noqa: E402
from strategies import build_strategy  # noqa: E402
from strategies.asynchronous import f_x_durations, to_ticks  # noqa: E402

ARMS = [
    ("FedAvg", "fedavg_sync", {}),
    ("async FedAvg", "async_fedavg", {"variant": "weight"}),
    ("FedFix-0.2", "fedfix", {"window_s": 0.2}),
    ("FedFix-0.5", "fedfix", {"window_s": 0.5}),
    ("FedFix-0.8", "fedfix", {"window_s": 0.8}),
    ("FedBuff-5", "fedbuff", {"buffer": 5}),
    ("FedBuff-10", "fedbuff", {"buffer": 10}),
]


def expected_steps(sc) -> int:
    """Server steps the arm takes before its horizon (the schedule alone, no training)."""
    strategy = build_strategy(sc.strategy, sc.population.clients)
    m = sc.population.clients
    durations = [to_ticks(t) for t in f_x_durations(m, sc.population.devices.f_x or 0.0)]
    schedule = strategy.schedule(examples=[1] * m, durations=durations, max_steps=sc.rounds)
    return sum(1 for _ in schedule.steps()) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "async-cifar-like.yaml"))
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--out", default="runs/async-compare")
    parser.add_argument("--evaluations", type=int, default=150, help="about this many evaluations per arm")
    args = parser.parse_args()

    started = time.monotonic()
    base = load_scenario(args.scenario).model_dump(mode="json")
    per_client = base["data"]["args"]["num_samples"] / base["population"]["clients"]
    for m in args.clients:
        curves = []
        for label, name, extra in ARMS:
            data = {
                **base,
                "name": f"{base['name']}-m{m}-{label.replace(' ', '-').lower()}",
                "data": {**base["data"], "args": {**base["data"]["args"], "num_samples": round(per_client * m)}},
                "population": {**base["population"], "clients": m},
                "strategy": {
                    **base["strategy"],
                    "name": name,
                    "clients_per_round": m,
                    "args": {**base["strategy"]["args"], **extra},
                },
            }
            sc = parse_scenario(data, source=f"{args.scenario} ({label}, M={m})")
            every = max(1, expected_steps(sc) // args.evaluations)
            sc = parse_scenario({**data, "evaluation": {"every": every}}, source=f"{args.scenario} ({label})")
            t0 = time.monotonic()
            out = run_scenario(sc, output_root=Path(args.out) / f"M{m}" / "runs", show_progress=False)
            print(f"M={m} {label}: {out.summary_line()} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
            curves.append(load_run(out.path, label))
        title = f"{base['name']}: M = {m}, F-{base['population']['devices']['profile'][2:]}"
        files = write_comparison(curves, Path(args.out) / f"M{m}", title=title)
        print(f"\n## {title}\n\n{table(curves)}\n\nplot: {files['png']}\n")
    print(f"all arms: {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
