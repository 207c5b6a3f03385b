"""A deployed round with and without the warm worker daemon, in one run.

    python bench/deploy_round.py [--repeats 3] [--scenario tests/deploy/tiny.yaml] [--nodes 2]

Runs ``fedsim deploy SCENARIO --local NODES`` (a real SuperLink and SuperNodes on this machine, TLS and node
authentication on) with ``--no-warm-worker`` (every message handled in the fresh ClientApp process Flower starts
for it: torch imported, data and model built each time) and with the default warm worker (that process forwards
the message to a long-lived daemon per SuperNode), alternating, ``--repeats`` times each. Prints each run's
wall time and per-round seconds (the metrics rows' ``round_wall_s``: from sending a round's messages to its
evaluation), the medians and fastest rounds and their ratios. The machine may be shared and timings noisy: the
two kinds of run alternate so that both see the same load. Their results must be the same; the script checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def deploy(scenario: str, nodes: int, *, warm: bool, out: Path) -> tuple[float, list[dict]]:
    """One ``fedsim deploy --local`` run: its wall seconds and metrics rows."""
    cmd = [
        sys.executable,
        "-m",
        "fedsim.cli",
        "deploy",
        scenario,
        "--local",
        str(nodes),
        "-o",
        str(out),
        "-q",
    ]
    if not warm:
        cmd.append("--no-warm-worker")
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    wall = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    (metrics,) = out.glob("*/*/metrics.jsonl")
    return wall, [json.loads(line) for line in metrics.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="tests/deploy/tiny.yaml")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    label = {False: "--no-warm-worker", True: "warm worker     "}
    walls: dict[bool, list[float]] = {False: [], True: []}
    rounds: dict[bool, list[float]] = {False: [], True: []}
    accuracy: dict[bool, list[float]] = {False: [], True: []}
    print(
        f"fedsim deploy {args.scenario} --local {args.nodes}, with and without the warm worker, alternating, "
        f"{args.repeats} run(s) each; {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="fedsim-bench-deploy-") as tmp:
        for rep in range(args.repeats):
            for warm in (False, True):
                wall, rows = deploy(args.scenario, args.nodes, warm=warm, out=Path(tmp) / f"{rep}-{warm}")
                per_round = [float(r["round_wall_s"]) for r in rows]
                walls[warm].append(wall)
                rounds[warm].extend(per_round)
                accuracy[warm] = [r.get("test_accuracy") for r in rows]
                shown = ", ".join(f"{s:.1f}" for s in per_round)
                print(f"  {label[warm]}  run {wall:5.1f} s wall; rounds: {shown} s", flush=True)
    if accuracy[False] != accuracy[True]:
        sys.exit(f"the results differ: {accuracy[False]} vs {accuracy[True]}")
    cold, warm_ = statistics.median(rounds[False]), statistics.median(rounds[True])
    print(f"median s/round: --no-warm-worker {cold:.2f}, warm worker {warm_:.2f}; ratio {cold / warm_:.2f}x")
    best_c, best_w = min(rounds[False]), min(rounds[True])
    print(
        f"fastest round:  --no-warm-worker {best_c:.2f}, warm worker {best_w:.2f}; ratio {best_c / best_w:.2f}x"
    )
    wc, ww = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"median run wall: --no-warm-worker {wc:.1f} s, warm worker {ww:.1f} s; ratio {wc / ww:.2f}x")
    print(f"test accuracy per round (the same in both): {accuracy[True]}")


if __name__ == "__main__":
    main()
