"""``report.md`` and its plots, from a run's metrics rows (counted and worded by ``fedsim.tally``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsim.scenario import Scenario
from fedsim.tally import (
    DROP_REASONS,
    evaluations,
    is_gossip,
    number,
    planned_evaluations,
    planned_rows,
    server_steps,
    warnings,
)


def loss_name(scenario: Scenario) -> str:
    """The loss the scenario's model is trained and tested with: the full-batch regression strategies (DIFF2-GD,
    DP-GD) fit the squared loss (mean of (h(a) − y)²); every other strategy trains a classifier (cross-entropy)."""
    from strategies.diff2 import DIFF2_NAMES  # here: the strategies package costs seconds to import

    return "mean squared error" if scenario.strategy.name in DIFF2_NAMES else "cross-entropy"


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """``key`` of every row as floats (a non-finite metric, stored as null, becomes a gap in the line)."""
    return [math.nan if r.get(key) is None else float(r[key]) for r in rows]


def plot_metrics(rows: Sequence[Mapping[str, Any]], path: Path, *, scenario: Scenario) -> Path:
    """Test accuracy (classifiers) and loss per round, or per tick for gossip (node means and the average model),
    with the clients' training loss; one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global figure manager or GUI backend to import
    from matplotlib.ticker import MaxNLocator

    gossip = is_gossip(scenario)
    x_key = "tick" if gossip else "round"
    ev = evaluations(rows)
    tr = [r for r in rows if r.get("train_loss") is not None]
    classifier = any("test_accuracy" in r for r in ev) or (not ev and loss_name(scenario) == "cross-entropy")
    fig = Figure(figsize=(10 if classifier else 5.5, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if classifier else 1, squeeze=False)
    ax_loss = axes[0][-1]
    test = "test (mean over nodes)" if gossip else "test"
    if classifier:
        ax_acc = axes[0][0]
        ax_acc.plot([r[x_key] for r in ev], _values(ev, "test_accuracy"), marker=".", label=test)
        if gossip:
            avg = [r for r in ev if "test_accuracy_avg_model" in r]
            xs = [r[x_key] for r in avg]
            ax_acc.plot(xs, _values(avg, "test_accuracy_avg_model"), marker=".", label="average model")
        ax_acc.set(xlabel=x_key, ylabel="accuracy", title="Test accuracy", ylim=(0, 1))
        ax_acc.legend()
    ax_loss.plot([r[x_key] for r in ev], _values(ev, "test_loss"), marker=".", label=test)
    train = "train (nodes)" if gossip else "train (clients)"
    ax_loss.plot([r[x_key] for r in tr], _values(tr, "train_loss"), alpha=0.7, label=train)
    ax_loss.set(xlabel=x_key, ylabel=loss_name(scenario), title="Loss")
    ax_loss.legend()
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds and ticks are whole numbers
    # fixed margins, not tight_layout (which draws the figure once more to measure it): room for the labels
    left = 0.07 if classifier else 0.13
    fig.subplots_adjust(left=left, right=0.98, bottom=0.13, top=0.92, wspace=0.22)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def write_run_privacy_report(
    run_dir: Path, scenario: Scenario, rows: Sequence[Mapping[str, Any]], privacy: Any = None
) -> str:
    """For a DP scenario, write ``privacy.json``/``privacy.md``/plot for what the run spent (the rounds it
    finished) with its measured clipping; return the settings line for ``report.md``."""
    if scenario.privacy is None:
        return "privacy: none (this run is not differentially private)"
    from fedsim.dp_plan import scenario_plan_and_spend
    from fedsim.privacy.plan import spend_rounds
    from fedsim.privacy.report import NOT_PRIVATE, measured_clipping, privacy_record, write_privacy_report

    def cached_data() -> Any:  # the machine's data cache (and torch): only when the sizes need the examples
        from fedsim.engine.setup import build_data

        return build_data(scenario)

    plan, spent = privacy or scenario_plan_and_spend(scenario, build=cached_data)
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


def _horizon_note(scenario: Scenario, rows: Sequence[Mapping[str, Any]]) -> str:
    """`` (stopped at strategy.args.horizon_s = 100 s of virtual time)`` when the event loop's rule stopped the run
    there: the first server step at or past the horizon, in the loop's integer ticks."""
    horizon = scenario.strategy.args.get("horizon_s")
    if horizon is None or not rows:
        return ""
    from strategies.asynchronous import to_ticks

    if to_ticks(float(rows[-1].get("virtual_time_s", 0.0))) < to_ticks(float(horizon)):
        return ""
    return f" (stopped at strategy.args.horizon_s = {horizon:g} s of virtual time)"


def _drop_breakdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """`` (10 non-finite, 2 failed)``: the run's dropped clients by reason."""
    counts = [
        (sum(int(r.get(f"dropped_{k}") or 0) for r in rows), label) for k, label in DROP_REASONS.items()
    ]
    named = [f"{n} {label}" for n, label in counts if n]
    return f" ({', '.join(named)})" if named else ""


def _server_table(scenario: Scenario, rows: Sequence[Mapping[str, Any]], loss: str) -> list[str]:
    ev = evaluations(rows)
    last = ev[-1] if ev else {}
    steps = server_steps(rows)
    done = sum(1 for r in rows if int(r.get("round", 0)) >= 1)
    lines = [
        f"| rounds | {done} of {planned_rows(scenario).removesuffix(' rounds')}{_horizon_note(scenario, rows)} |"
    ]
    if any("test_accuracy" in r for r in ev):
        accs = [r["test_accuracy"] for r in ev if isinstance(r.get("test_accuracy"), int | float)]
        lines += [
            f"| final test accuracy | {number(last.get('test_accuracy', ...))} |",
            f"| best test accuracy | {number(max(accs) if accs else ...)} |",
        ]
    trained = sum(int(r.get("clients") or 0) for r in steps)
    dropped = sum(int(r.get("dropped") or 0) for r in steps)
    return [
        *lines,
        f"| final test loss ({loss}) | {number(last.get('test_loss', ...))} |",
        f"| client updates aggregated / dropped | {trained} / {dropped}{_drop_breakdown(steps)} |",
    ]


def _gossip_table(scenario: Scenario, rows: Sequence[Mapping[str, Any]], loss: str) -> list[str]:
    g = scenario.gossip_settings
    ev = evaluations(rows)
    last = ev[-1] if ev else {}
    accs = [r["test_accuracy"] for r in ev if isinstance(r.get("test_accuracy"), int | float)]
    final = rows[-1] if rows else {}
    return [
        f"| ticks | {int(final.get('tick', 0))} of {g.ticks} |",
        f"| evaluations (tick 0, every {g.eval_every} ticks, the last tick) | {len(ev)} of "
        f"{planned_evaluations(scenario)} |",
        f"| final test accuracy (mean over nodes) | {number(last.get('test_accuracy', ...))} |",
        f"| best test accuracy (mean over nodes) | {number(max(accs) if accs else ...)} |",
        f"| final test accuracy of the nodes' average model | {number(last.get('test_accuracy_avg_model', ...))} |",
        f"| final test loss ({loss}, mean over nodes) | {number(last.get('test_loss', ...))} |",
        f"| node trainings / failed | {int(final.get('trained', 0))} / {int(final.get('failed', 0))} |",
    ]


def _server_settings(scenario: Scenario) -> list[str]:
    from strategies.diff2 import DIFF2_NAMES

    st = scenario.strategy
    args = f" {dict(st.args)}" if st.args else ""
    if (
        st.name in DIFF2_NAMES
    ):  # full batch on every client, the step in strategy.args: no cohort, no local SGD
        return [f"- strategy: `{st.name}`{args}, every client in every round (full-batch gradients)"]
    return [
        f"- strategy: `{st.name}`{args}, {st.clients_per_round} clients/round, "
        f"server optimizer {st.server_optimizer.model_dump()}",
        f"- clients: {scenario.client.epochs} epoch(s), batch {scenario.client.batch_size}, "
        f"optimizer {scenario.client.optimizer.model_dump()}",
    ]


def _gossip_settings(scenario: Scenario) -> list[str]:
    g = scenario.gossip_settings
    topo = g.topology
    seed = f", seed {topo.seed}" if topo.seed is not None else ""
    timing = (
        f"every {g.interval[0]}..{g.interval[1]} ticks"
        if g.schedule == "uniform"
        else "from the device profiles"
    )
    return [
        f"- strategy: `gossip`, {scenario.population.clients} nodes, topology `{topo.kind}` {dict(topo.args)}{seed}",
        f"- merge: rule `{g.rule}`, beta {g.beta:g}, eps {g.eps:g}; mode `{g.mode}`; timeout {g.timeout} ticks; "
        f"initial models `{g.init}`",
        f"- node training: unit `{g.unit}` per event, events {timing} (schedule `{g.schedule}`), batch "
        f"{scenario.client.batch_size}, optimizer {scenario.client.optimizer.model_dump()}",
        f"- time: {g.ticks} ticks of {g.tick_s:g} s; evaluation every {g.eval_every} ticks",
    ]


def withholds(scenario: Scenario, name: str) -> bool:
    """Whether a DP run keeps the field ``name`` back from what it publishes: ``fedsim.privacy.release`` decides
    which fields are privatised (wall time is not: it depends on who trained)."""
    from fedsim.privacy.release import is_privatised

    return scenario.privacy is not None and not scenario.privacy.release_diagnostics and not is_privatised(name)


def _checkpoints_note(scenario: Scenario, gossip: bool) -> str:
    """What ``checkpoints/`` holds; for a DP run, that it must not be shared: the strategy state carries the
    noise generator's state, from which the noise added so far can be recomputed and subtracted."""
    out = scenario.output
    note = (
        "model + strategy state" + (", node models" if gossip else "") + " and everything `fedsim run --resume` "
        "needs (random streams, clocks, results in flight), written atomically and owner-only (mode 0600); the "
        f"newest {out.keep_checkpoints} kept"
    )
    if scenario.privacy is not None:
        note += (
            ". They hold the DP noise generator's state and the secret cohort seed: they reconstruct the noise and "
            "who was sampled, so share a DP results folder without `checkpoints/`"
        )
    return note


def write_report(
    run_dir: Path,
    scenario: Scenario,
    rows: Sequence[Mapping[str, Any]],
    *,
    wall_s: float,
    privacy: Any = None,
) -> Path:
    """Write ``report.md`` (warnings, summary table, settings, plot) into ``run_dir``; for a DP scenario also the
    privacy report (``privacy``: the resolved ``(PrivacyPlan, Spend)`` when the caller has it).

    What the report counts and says comes from ``rows`` (``fedsim.tally``): a server run in rounds, a gossip run
    in ticks and evaluations, each with the settings that apply to it."""
    privacy_line = write_run_privacy_report(run_dir, scenario, rows, privacy)
    plot = plot_metrics(rows, run_dir / "plots" / "metrics.png", scenario=scenario)
    gossip = is_gossip(scenario)
    loss = loss_name(scenario)
    table = (_gossip_table if gossip else _server_table)(scenario, rows, loss)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    files = [
        ("scenario.yaml", "resolved scenario"),
        ("metrics.jsonl", "one row per evaluation" if gossip else "one row per round"),
        ("model.pt", "final weights" + (": the average of the node models" if gossip else "")),
        ("checkpoints", _checkpoints_note(scenario, gossip)),
        ("plots", "this report's figures"),
    ]
    lines = [
        f"# Run report: {scenario.name}",
        "",
        *(f"**WARNING: {w}.**\n" for w in warnings(scenario, rows)),
        "| metric | value |",
        "|---|---|",
        *table,
        f"| virtual time (s) | {fmt(rows[-1].get('virtual_time_s') if rows else None)} |",
        *([] if withholds(scenario, "wall_time_s") else [f"| wall time (s, incl. start-up) | {wall_s:.1f} |"]),
        "",
        "## Settings",
        "",
        f"- data: `{scenario.data.dataset}`, partitioner `{scenario.data.partitioner}` "
        f"{dict(scenario.data.partitioner_args)}, {scenario.population.clients} {'nodes' if gossip else 'clients'}",
        f"- model: `{scenario.model.name}` {dict(scenario.model.args)}",
        *(_gossip_settings(scenario) if gossip else _server_settings(scenario)),
        f"- seed {scenario.seed}; {privacy_line}",
        "",
        f"## {'Loss' if loss != 'cross-entropy' else 'Accuracy and loss'} per {'tick' if gossip else 'round'}",
        "",
        f"![metrics]({plot.relative_to(run_dir).as_posix()})",
        "",
        "Files: "
        + ", ".join(f"`{name}` ({what})" for name, what in files if (run_dir / name).exists())
        + ".",
        "",
    ]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
