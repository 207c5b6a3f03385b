"""``report.md`` and its plots, from a run's metrics rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsim.scenario import Scenario


def plot_metrics(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Test accuracy and loss (and training loss) per round, one PNG with two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = [r for r in rows if r.get("test_accuracy") is not None]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_acc.plot([r["round"] for r in ev], [r["test_accuracy"] for r in ev], marker=".", label="test")
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Test accuracy", ylim=(0, 1))
    ax_acc.grid(alpha=0.3)
    ax_loss.plot([r["round"] for r in ev], [r["test_loss"] for r in ev], marker=".", label="test")
    tr = [r for r in rows if r.get("train_loss") is not None]
    ax_loss.plot([r["round"] for r in tr], [r["train_loss"] for r in tr], alpha=0.7, label="train (clients)")
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title="Loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    run_dir: Path, scenario: Scenario, rows: Sequence[Mapping[str, Any]], *, wall_s: float
) -> Path:
    """Write ``report.md`` (summary table, settings, plot) into ``run_dir``."""
    plot = plot_metrics(rows, run_dir / "plots" / "metrics.png")
    last_eval = next((r for r in reversed(rows) if r.get("test_accuracy") is not None), {})
    best = max((r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None), default=None)
    dropped = sum(int(r.get("dropped", 0)) for r in rows)
    trained = sum(int(r.get("clients", 0)) for r in rows)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        f"# Run report: {scenario.name}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| rounds | {len(rows)} of {scenario.rounds} |",
        f"| final test accuracy | {fmt(last_eval.get('test_accuracy'))} |",
        f"| best test accuracy | {fmt(best)} |",
        f"| final test loss | {fmt(last_eval.get('test_loss'))} |",
        f"| client trainings / dropped | {trained} / {dropped} |",
        f"| virtual time (s) | {fmt(rows[-1].get('virtual_time_s') if rows else None)} |",
        f"| wall time (s, incl. start-up) | {wall_s:.1f} |",
        "",
        "## Settings",
        "",
        f"- data: `{scenario.data.dataset}`, partitioner `{scenario.data.partitioner}` "
        f"{dict(scenario.data.partitioner_args)}, {scenario.population.clients} clients",
        f"- model: `{scenario.model.name}` {dict(scenario.model.args)}",
        f"- strategy: `{scenario.strategy.name}`, {scenario.strategy.clients_per_round} clients/round, "
        f"server optimizer {scenario.strategy.server_optimizer.model_dump()}",
        f"- clients: {scenario.client.epochs} epoch(s), batch {scenario.client.batch_size}, "
        f"optimizer {scenario.client.optimizer.model_dump()}",
        f"- seed {scenario.seed}; privacy: none (this run is not differentially private)",
        "",
        "## Accuracy and loss per round",
        "",
        f"![metrics]({plot.relative_to(run_dir).as_posix()})",
        "",
        "Files: `scenario.yaml` (resolved scenario), `metrics.jsonl` (one row per round), `model.pt` (final "
        "weights), `checkpoints/` (model + strategy state).",
        "",
    ]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
