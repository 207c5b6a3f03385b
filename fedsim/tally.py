"""What a run's metrics rows add up to, in the words every front end prints.

Why this module exists: ``fedsim run``'s progress display and closing line, the ServerApp's log lines under
``flwr run`` and ``fedsim deploy``, and ``report.md`` all say how far a run got and how it went. They all say it
from the rows the run wrote, through these functions, so that no front end claims more than the rows support (a
run whose every update was dropped does not end on a line that looks like a normal run's), a run is counted one
way per family (rounds for a server; ticks and evaluations for gossip), and no second copy of a formatter drifts
from the first.

Row keys read here (written by the engine's loops): ``round``, ``clients`` (updates aggregated), ``selected``,
``dropped`` and ``dropped_<reason>``; gossip's ``tick``, ``trained`` and ``failed`` (counters since tick 0); and
any ``test_*`` metric, which marks an evaluation. A metric whose key is present with the value ``None`` was not
finite (``metrics.jsonl`` has no NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedsim.scenario import Scenario

Row = Mapping[str, Any]

SUMMARY_METRICS = ("test_accuracy", "test_loss", "test_accuracy_avg_model")
"""The metrics the closing line shows, when the last evaluation has them (a regression run has no accuracy; a
gossip run's accuracy and loss are the means over nodes, and it also has its average model's accuracy)."""

DROP_REASONS = {
    "nonfinite": "non-finite",
    "failure": "failed",
    "timeout": "timed out",
    "unavailable": "unavailable",
    "late": "late",
    "cancelled": "cancelled",
}
"""``dropped_<reason>`` row keys and how a line says them."""


def is_gossip(scenario: Scenario) -> bool:
    """Gossip has no server rounds: it runs ``gossip.ticks`` and evaluates every ``gossip.eval_every`` ticks."""
    return scenario.strategy.name == "gossip"


def is_evaluation(row: Row) -> bool:
    """Whether ``row`` carries an evaluation: any ``test_*`` metric (a regression run's has only ``test_loss``)."""
    return any(k.startswith("test_") for k in row)


def evaluations(rows: Sequence[Row]) -> list[Row]:
    """The rows that carry an evaluation, in order."""
    return [r for r in rows if is_evaluation(r)]


def number(value: Any, spec: str = ".4f") -> str:
    """A metric as the lines print it: ``n/a`` when absent, ``non-finite`` for None/NaN/inf (see the module)."""
    if value is ...:
        return "n/a"
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "non-finite"
    return format(value, spec)


def planned_evaluations(scenario: Scenario) -> int:
    """Gossip's evaluations when it runs to the end: tick 0, every ``eval_every`` ticks, and the last tick."""
    return scenario.planned_rounds + 1


def planned_rows(scenario: Scenario) -> str:
    """The metrics rows a run writes when it runs to its end, in words: ``50 rounds``; ``at most 50 rounds`` when
    ``strategy.args.horizon_s`` may stop it first; for gossip ``21 evaluations`` (tick 0 included)."""
    if is_gossip(scenario):
        return f"{planned_evaluations(scenario)} evaluations"
    bound = "at most " if scenario.strategy.args.get("horizon_s") is not None else ""
    return f"{bound}{scenario.planned_rounds} rounds"


def server_steps(rows: Sequence[Row]) -> list[Row]:
    """The rows of a server family's rounds (or event-driven server steps) that say how many updates they used."""
    return [r for r in rows if "clients" in r and int(r.get("round", 0)) >= 1]


def _drops(rows: Sequence[Row]) -> str:
    """``500 dropped as non-finite, 20 as failed`` over ``rows``, or what else emptied them."""
    counts = {label: sum(int(r.get(f"dropped_{k}") or 0) for r in rows) for k, label in DROP_REASONS.items()}
    total = sum(int(r.get("dropped") or 0) for r in rows)
    named = [(n, label) for label, n in counts.items() if n]
    if total > sum(n for n, _ in named):
        named.append((total - sum(n for n, _ in named), "other reasons"))
    if not named:
        return "no client was selected" if all(not r.get("selected") for r in rows) else "no update arrived"
    first, *rest = named
    return ", ".join([f"{first[0]} dropped as {first[1]}", *(f"{n} as {label}" for n, label in rest)])


def warnings(scenario: Scenario, rows: Sequence[Row]) -> list[str]:
    """What a reader of the closing line or the report must not miss: rounds that aggregated no update (and why),
    updates dropped as non-finite in the others, a gossip run in which no node trained. Empty for a sound run."""
    if is_gossip(scenario):
        last = rows[-1] if rows else {}
        tick = int(last.get("tick", 0))
        if tick > 0 and int(last.get("trained", 0)) == 0:
            return [f"no node trained in {tick} ticks ({int(last.get('failed', 0))} node trainings failed)"]
        return []
    steps = server_steps(rows)
    empty = [r for r in steps if int(r["clients"]) == 0]
    out = []
    if empty and len(empty) == len(steps):
        out.append(f"all {len(steps)} rounds aggregated no update ({_drops(empty)})")
    elif empty:
        out.append(f"{len(empty)} of {len(steps)} rounds had no clients ({_drops(empty)})")
    nonfinite = sum(int(r.get("dropped_nonfinite") or 0) for r in steps if int(r["clients"]) > 0)
    if nonfinite:
        out.append(f"{nonfinite} client updates dropped as non-finite in the rounds that aggregated")
    return out


def extent(scenario: Scenario, rows: Sequence[Row]) -> str:
    """How far the run got, as the closing line says it: ``rounds=50``; for gossip ``ticks=1000 evaluations=21``."""
    if is_gossip(scenario):
        tick = int(rows[-1].get("tick", 0)) if rows else 0
        return f"ticks={tick} evaluations={len(evaluations(rows))}"
    return f"rounds={sum(1 for r in rows if int(r.get('round', 0)) >= 1)}"


def progress_status(row: Row) -> str:
    """A row's short status for the progress display: accuracy (else the test loss) and the clients kept and
    dropped, as far as the row has them."""
    parts = []
    if "test_accuracy" in row:
        parts.append(f"acc={number(row['test_accuracy'], '.3f')}")
    elif "test_loss" in row:
        parts.append(f"test_loss={number(row['test_loss'], '.4g')}")
    parts += [f"{k}={row[k]}" for k in ("clients", "dropped") if k in row]
    return " ".join(parts)


def position(scenario: Scenario, row: Row) -> tuple[str, int, int]:
    """Where ``row`` stands: (unit, done, planned): ``("round", 3, 50)``; for gossip ``("tick", 300, 1000)``.
    With ``strategy.args.horizon_s`` the planned rounds are an upper bound."""
    if is_gossip(scenario):
        return "tick", int(row.get("tick", 0)), scenario.gossip_settings.ticks
    return "round", int(row.get("round", 0)), scenario.planned_rounds


def step_line(scenario: Scenario, row: Row) -> str:
    """One line per metrics row: ``round 3/50 acc=0.912 clients=10 dropped=0`` (gossip: ``tick 300/1000 ...``)."""
    unit, done, planned = position(scenario, row)
    status = progress_status(row)
    return f"{unit} {done}/{planned}" + (f" {status}" if status else "")


def closing_line(scenario: Scenario, rows: Sequence[Row], *, wall_s: float | None, results: Any) -> str:
    """The line a finished run ends on: its extent, warnings (if any), the last evaluation's metrics, ε so far,
    wall time and where the results are (always last: scripts split on ``results=``)."""
    evals = evaluations(rows)
    last_eval = evals[-1] if evals else {}
    last = rows[-1] if rows else {}
    warned = warnings(scenario, rows)
    parts = [f"done: {extent(scenario, rows)}"]
    if warned:
        parts.append("WARNING: " + "; ".join(warned) + ";")
    parts += [f"{k}={number(last_eval[k])}" for k in SUMMARY_METRICS if k in last_eval]
    parts += [f"{k}={number(v, '.3f')}" for k, v in last.items() if k.startswith("epsilon_")]
    if wall_s is not None:
        parts.append(f"wall_s={wall_s:.1f}")
    parts.append(f"results={results}")
    return " ".join(parts)
