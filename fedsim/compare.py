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


@dataclass(frozen=True)
class Curve:
    """One run's evaluated rows."""

    label: str
    path: Path
    rows: list[dict[str, Any]]

    @property
    def evaluated(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("test_accuracy") is not None]

    def summary(self) -> dict[str, Any]:
        ev = self.evaluated
        last = ev[-1] if ev else {}
        acc = [r["test_accuracy"] for r in ev]
        tail = acc[-max(1, len(acc) // 5) :]  # the last fifth of the evaluations: level and stability
        return {
            "run": self.label,
            "server steps": len(self.rows),
            "virtual time (s)": self.rows[-1]["virtual_time_s"] if self.rows else math.nan,
            "final accuracy": last.get("test_accuracy", math.nan),
            "best accuracy": max(acc) if acc else math.nan,
            "last-fifth mean": sum(tail) / len(tail) if tail else math.nan,
            "last-fifth spread": (max(tail) - min(tail)) if tail else math.nan,
            "final loss": last.get("test_loss", math.nan),
        }


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
        t = [r["virtual_time_s"] for r in ev]
        ax_acc.plot(t, [r["test_accuracy"] for r in ev], linewidth=1.3, label=c.label)
        ax_loss.plot(t, [r["test_loss"] for r in ev], linewidth=1.3, label=c.label)
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
        + "\n\nRuns:\n\n"
        + "\n".join(f"- {c.label}: `{c.path}`" for c in curves)
        + "\n",
        encoding="utf-8",
    )
    return {"png": png, "md": md}
