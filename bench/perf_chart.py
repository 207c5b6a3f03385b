"""Seconds per round against clients per round for fedsim, pfl-research and stock Flower, with the FLOP floor.

    python bench/perf_chart.py                          # 10, 100, 1000, 10 000 clients/round; docs/img/performance-cpu.png
    python bench/perf_chart.py --cohorts 10 100         # fewer points
    python bench/perf_chart.py --flower-max 100         # stock Flower only up to 100 clients/round (it is slow)

For every cohort size it runs ``bench/engine_vs_pfl.py`` (each arm in a fresh process, on this machine's cores:
fedsim as a user runs it, pfl-research in one process and under ``torchrun``, stock Flower with one SuperNode per
client up to ``--flower-max``, and the FLOP floor), on the CPU workload of that script: a population of 10 000
(``blobs``, 32 examples each), MLP 784-64-10, 4 SGD steps of batch 8. It prints one table and draws the chart
(log-log) into ``--png``. Arms that are not installed (pfl) are left out and said so. Recorded output:
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "fedsim": "fedsim (Ray workers, vectorised)",
    "pfl": "pfl-research, 1 process",
    "pfl-dist": "pfl-research, torchrun",
    "flower": "stock Flower (a SuperNode per client)",
    "floor": "FLOP floor",
}


def measure(cohort: int, args: argparse.Namespace) -> dict:
    """One run of engine_vs_pfl.py at ``cohort`` clients/round; its JSON results."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(ROOT / "bench" / "engine_vs_pfl.py"), "--clients-per-round", str(cohort)]
        cmd += ["--rounds", str(args.rounds), "--out", str(out)]
        if cohort <= args.flower_max:
            cmd += ["--with-flower", "--flower-rounds", str(args.flower_rounds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0 or not out.exists():
            sys.stderr.write(proc.stderr[-3000:])
            sys.exit(f"bench: error: engine_vs_pfl.py failed at {cohort} clients/round (output above)")
        return json.loads(out.read_text())


def draw(results: dict[int, dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    for arm, label in ARMS.items():
        points = [(k, r[arm]["s_per_round"]) for k, r in sorted(results.items()) if arm in r]
        if points:
            style = "k--" if arm == "floor" else "o-"
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clients per round (population 10 000)")
    ax.set_ylabel("seconds per round")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.95, bottom=0.12)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 100, 1000, 10_000])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per arm (median of all but the first)")
    parser.add_argument("--flower-max", type=int, default=1000, help="largest cohort stock Flower runs")
    parser.add_argument("--flower-rounds", type=int, default=2)
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "performance-cpu.png")
    args = parser.parse_args()
    results = {k: measure(k, args) for k in args.cohorts}
    print("\n| clients/round | " + " | ".join(ARMS.values()) + " |")
    print("|---" * (len(ARMS) + 1) + "|")
    for k, r in sorted(results.items()):
        cells = [f"{r[arm]['s_per_round']:.3f}" if arm in r else "-" for arm in ARMS]
        print(f"| {k} | " + " | ".join(cells) + " |")
    draw(results, args.png)
    print(f"chart: {args.png.relative_to(ROOT) if args.png.is_relative_to(ROOT) else args.png}")


if __name__ == "__main__":
    main()
