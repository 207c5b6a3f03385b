"""One federated scenario, several client optimizers: test accuracy per round for each.

    python bench/optimizers_fl.py                               # scenarios/optimizers-noniid.yaml
    python bench/optimizers_fl.py --optimizers sgd:0.1 adam:0.003

Each optimizer runs the scenario end to end with ``fedsim.run.run_scenario`` (Ray workers, vectorised clients),
only ``client.optimizer`` changed, results in a temporary folder. Prints a Markdown table of test accuracy per
round (every ``--every`` rounds) and the final one. Recorded output: ``docs/optimizers.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.run import run_scenario  # noqa: E402
from fedsim.scenario import load_scenario, parse_scenario  # noqa: E402

DEFAULT = ["sgd:0.1", "adam:0.003", "diffgrad:0.003", "spam:0.003", "scale:0.01", "swan:0.01"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "optimizers-noniid.yaml"))
    parser.add_argument("--optimizers", nargs="+", default=DEFAULT, help="name:lr pairs")
    parser.add_argument("--every", type=int, default=2, help="print every N-th round")
    args = parser.parse_args()
    base = load_scenario(args.scenario).model_dump(mode="json")
    curves: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for spec in args.optimizers:
            name, _, lr = spec.partition(":")
            raw = {**base, "client": {**base["client"], "optimizer": {"name": name, "lr": float(lr)}}}
            outcome = run_scenario(
                parse_scenario(raw, source=args.scenario), output_root=out, show_progress=False
            )
            rows = [json.loads(line) for line in (outcome.path / "metrics.jsonl").read_text().splitlines()]
            curves[spec] = [r["test_accuracy"] for r in rows]
            print(f"{spec}: final test accuracy {curves[spec][-1]:.4f}", flush=True)
    rounds = len(next(iter(curves.values())))
    shown = [r for r in range(1, rounds + 1) if r % args.every == 0 or r in (1, rounds)]
    print(f"\n# {Path(args.scenario).name}: test accuracy after each round (client optimizer name:lr)")
    print("| optimizer | " + " | ".join(f"r{r}" for r in shown) + " |")
    print("|---|" + "---|" * len(shown))
    for spec, accs in curves.items():
        print(f"| {spec} | " + " | ".join(f"{accs[r - 1]:.3f}" for r in shown) + " |")


if __name__ == "__main__":
    main()
