"""``fedsim compare``: several runs on one virtual-time axis: accuracy and loss curves in one PNG, and a table.

Why this module exists: asynchronous strategies do different numbers of server steps in the same time, so they
are compared against the virtual clock (``virtual_time_s`` of every metrics row), not against rounds. Each item
is a finished run folder (its ``metrics.jsonl`` is read) or a scenario file (it is run first).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.errors import ConfigError
from fedsim.results import read_metrics
from fedsim.tally import evaluations


@dataclass(frozen=True)
class Curve:
    """One run's evaluated rows."""

    label: str
    path: Path
    rows: list[dict[str, Any]]

    @property
    def evaluated(self) -> list[dict[str, Any]]:
        """The rows with an evaluation (any ``test_*`` metric: a regression run's have only ``test_loss``)."""
        return evaluations(self.rows)  # type: ignore[return-value]

    @property
    def steps(self) -> int | str:
        """How far the run went: its rounds or server steps; a gossip run (no server) its ticks."""
        if self.rows and "tick" in self.rows[-1]:
            return f"{self.rows[-1]['tick']} ticks"
        return sum(1 for r in self.rows if int(r.get("round", 0)) >= 1)

    def summary(self) -> dict[str, Any]:
        ev = self.evaluated
        last = ev[-1] if ev else {}
        acc = [r["test_accuracy"] for r in ev if isinstance(r.get("test_accuracy"), int | float)]
        tail = acc[-max(1, len(acc) // 5) :]  # the last fifth of the evaluations: level and stability
        return {
            "run": self.label,
            "steps": self.steps,
            "virtual time (s)": self.rows[-1]["virtual_time_s"] if self.rows else math.nan,
            "final accuracy": _finite(last.get("test_accuracy")),
            "best accuracy": max(acc) if acc else math.nan,
            "last-fifth mean": sum(tail) / len(tail) if tail else math.nan,
            "last-fifth spread": (max(tail) - min(tail)) if tail else math.nan,
            "final loss": _finite(last.get("test_loss")),
        }


def _finite(value: Any) -> float:
    """A metric for the table: NaN when absent or not finite (``metrics.jsonl`` stores those as null)."""
    return math.nan if value is None else float(value)


def check_items(items: Sequence[Path]) -> None:
    """Every item must exist: a scenario file or a run folder (before any scenario is run).

    Raises:
        ConfigError: names the argument (its position and path) that is neither.
    """
    for i, item in enumerate(items, 1):
        if not item.exists():
            raise ConfigError(
                f"compare argument {i} ({item})",
                "a scenario file or a run folder (with metrics.jsonl); there is no such file or folder",
            )


def load_run(path: Path, label: str | None = None) -> Curve:
    """A finished run folder (``metrics.jsonl`` inside).

    Raises:
        ConfigError: the folder has no metrics.
    """
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError("compare", "a run folder with metrics.jsonl, or a scenario file", str(path))
    rows = read_metrics(metrics)
    return Curve(label or path.parent.name, path, rows)


def plot(curves: Sequence[Curve], out: Path, *, title: str = "") -> Path:
    """Test accuracy and loss against virtual time, one line per run, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for c in curves:
        ev = c.evaluated
        for ax, key in ((ax_acc, "test_accuracy"), (ax_loss, "test_loss")):  # regression: no accuracy
            have = [r for r in ev if key in r]
            t, y = [r["virtual_time_s"] for r in have], [_finite(r[key]) for r in have]
            ax.plot(t, y, linewidth=1.3, label=c.label)
    ax_acc.set(xlabel="virtual time (s)", ylabel="test accuracy", title=title or "test accuracy")
    ax_loss.set(xlabel="virtual time (s)", ylabel="test loss", title="test loss")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def table(curves: Sequence[Curve]) -> str:
    """A Markdown table of every run's summary."""
    rows = [c.summary() for c in curves]
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_comparison(curves: Sequence[Curve], out_dir: Path, *, title: str = "") -> Mapping[str, Path]:
    """``compare.png`` and ``compare.md`` (the table and where each run's results are) in ``out_dir``."""
    png = plot(curves, out_dir / "compare.png", title=title)
    md = out_dir / "compare.md"
    md.write_text(
        (f"# {title}\n\n" if title else "# Comparison\n\n")
        + "Curves against virtual time: ![comparison](compare.png)\n\n"
        + table(curves)
        + "\n\nsteps: rounds, or a server's steps for an event-driven strategy; for gossip, ticks.\n\nRuns:\n\n"
        + "\n".join(f"- {c.label}: `{c.path}`" for c in curves)
        + "\n",
        encoding="utf-8",
    )
    return {"png": png, "md": md}
