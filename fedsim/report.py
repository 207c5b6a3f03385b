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


def write_run_privacy_report(
    run_dir: Path, scenario: Scenario, rows: Sequence[Mapping[str, Any]], privacy: Any = None
) -> str:
    """For a DP scenario, write ``privacy.json``/``privacy.md``/plot for what the run spent (the rounds it
    finished) with its measured clipping; return the settings line for ``report.md``."""
    if scenario.privacy is None:
        return "privacy: none (this run is not differentially private)"
    from fedsim.privacy.plan import plan_and_spend, spend_rounds
    from fedsim.privacy.report import NOT_PRIVATE, measured_clipping, privacy_record, write_privacy_report

    plan, spent = privacy or plan_and_spend(scenario)
    done = len(rows)
    if 0 < done < plan.rounds:
        spent = spend_rounds(plan, done)
    record = privacy_record(plan, spent, source="run", measured=measured_clipping(rows), rounds_run=done)
    write_privacy_report(run_dir, record, plan)
    eps = ", ".join(f"{a} {v:.3f}" for a, v in record["epsilon"].items())
    flag = f" **{NOT_PRIVATE}**" if record["insecure_seed"] else ""
    return (
        f"privacy: {plan.config.level}-level DP, ε = {eps} at δ = {plan.config.delta:g} after {done} round(s)"
        f"{flag} (see `privacy.md`)"
    )


def write_report(
    run_dir: Path,
    scenario: Scenario,
    rows: Sequence[Mapping[str, Any]],
    *,
    wall_s: float,
    privacy: Any = None,
) -> Path:
    """Write ``report.md`` (summary table, settings, plot) into ``run_dir``; for a DP scenario also the privacy
    report (``privacy``: the resolved ``(PrivacyPlan, Spend)`` when the caller has it)."""
    privacy_line = write_run_privacy_report(run_dir, scenario, rows, privacy)
    plot = plot_metrics(rows, run_dir / "plots" / "metrics.png")
    last_eval = next((r for r in reversed(rows) if r.get("test_accuracy") is not None), {})
    best = max((r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None), default=None)
    dropped = sum(int(r.get("dropped", 0)) for r in rows)
    trained = sum(int(r.get("clients", 0)) for r in rows)
    if scenario.strategy.name == "gossip" and rows:  # node training steps so far (a gossip row's counter)
        trained = int(rows[-1].get("trained", 0))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        f"# Run report: {scenario.name}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| {'evaluations' if scenario.strategy.name == 'gossip' else 'rounds'} | "
        f"{rows[-1].get('round', len(rows)) if rows else 0} of {scenario.planned_rounds} |",
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
        f"- seed {scenario.seed}; {privacy_line}",
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
