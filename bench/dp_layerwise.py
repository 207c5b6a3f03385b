"""Layer-wise DP clipping against global clipping at the same ε: one scenario, two clipping modes, one plot.

    python bench/dp_layerwise.py                      # scenarios/dp-layerwise.yaml
    python bench/dp_layerwise.py --insecure-seed      # reproducible noise (the report then says NOT PRIVATE)

Runs the scenario as written (per-layer clipping) and again with ``privacy.per_layer: null`` and
``normalize_layers: false`` (one global bound). Both have the same σ, q and rounds, so the same ε. Prints the test
accuracy of both per evaluated round and writes both curves into one PNG (default
``runs/dp-layerwise/compare.png``). Recorded output: ``docs/privacy.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.results import read_metrics  # noqa: E402
from fedsim.run import run_scenario  # noqa: E402
from fedsim.scenario import load_scenario, parse_scenario  # noqa: E402


def curves(rows):
    ev = [r for r in rows if r.get("test_accuracy") is not None]
    return [r["round"] for r in ev], [r["test_accuracy"] for r in ev]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "dp-layerwise.yaml"))
    parser.add_argument("--plot", default=None, help="PNG path (default: runs/<name>/compare.png)")
    parser.add_argument("--insecure-seed", action="store_true", help="noise from the scenario seed")
    args = parser.parse_args()

    base = load_scenario(args.scenario).model_dump(mode="json")
    base["privacy"]["insecure_seed"] = bool(args.insecure_seed)
    arms = {
        f"per_layer={base['privacy']['per_layer']}, normalize_layers={base['privacy']['normalize_layers']}": base,
        "global clip": {**base, "privacy": {**base["privacy"], "per_layer": None, "normalize_layers": False}},
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, data in arms.items():
            sc = parse_scenario(data, source=f"{args.scenario} ({label})")
            out = run_scenario(sc, output_root=tmp, show_progress=False)
            print(f"{label}: {out.summary_line()}", file=sys.stderr)
            results[label] = curves(read_metrics(out.path / "metrics.jsonl"))
            eps = {k: v for k, v in out.summary.last_row.items() if k.startswith("epsilon_")}
            results[label] += (eps,)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (rounds, acc, _eps) in results.items():
        ax.plot(rounds, acc, marker=".", label=label)
    eps_txt = ", ".join(f"{k[len('epsilon_') :]} {v:.2f}" for k, v in next(iter(results.values()))[2].items())
    ax.set(xlabel="round", ylabel="test accuracy", title=f"{base['name']}: same ε ({eps_txt})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plot = Path(args.plot or Path(base["output"]["dir"]) / base["name"] / "compare.png")
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)

    labels = list(results)
    rounds = results[labels[0]][0]
    print(f"# {base['name']}: test accuracy per evaluated round, same ε ({eps_txt})")
    print("| round | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for i, r in enumerate(rounds):
        print(f"| {r} | " + " | ".join(f"{results[lab][1][i]:.3f}" for lab in labels) + " |")
    print(f"plot: {plot}")


if __name__ == "__main__":
    main()
