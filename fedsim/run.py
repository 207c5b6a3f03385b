"""Orchestration of ``fedsim run``: results folder, progress display, simulation, report."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedsim.engine.server import RunSummary
from fedsim.errors import ConfigError
from fedsim.report import write_report
from fedsim.results import RunDir, new_run_dir
from fedsim.scenario import Scenario
from fedsim.scenario.load import check_registered_names

SUMMARY_METRICS = ("test_accuracy", "test_loss", "test_accuracy_avg_model")
"""The last row's metrics the closing line shows, when the run's rows have them (a regression run has no
accuracy; a gossip run reports node and average-model accuracies)."""


@dataclass(frozen=True)
class RunOutcome:
    """Where a run's results are and how it ended."""

    path: Path
    summary: RunSummary
    wall_s: float

    def summary_line(self) -> str:
        row = self.summary.last_row
        shown = "".join(f" {k}={row[k]:.4f}" for k in SUMMARY_METRICS if isinstance(row.get(k), int | float))
        eps = "".join(
            f" epsilon_{k[len('epsilon_') :]}={v:.3f}" for k, v in row.items() if k.startswith("epsilon_")
        )
        return f"done: rounds={self.summary.rounds}{shown}{eps} wall_s={self.wall_s:.1f} results={self.path}"


class _ProgressDisplay:
    """A live bar on a terminal; on a pipe (CI, logs) a plain line every ~10% of the rounds."""

    def __init__(self, console: Console, rounds: int, *, backend: str = "") -> None:
        self.console, self.rounds, self.backend = console, rounds, backend
        self.every = max(1, rounds // 10)
        self.progress: Progress | None = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task("starting workers", total=rounds, status="")

    def __enter__(self) -> _ProgressDisplay:
        first = f"starting {self.backend} for {self.rounds} rounds ..." if self.backend else None
        if self.progress:
            if first:
                self.console.print(first, highlight=False, soft_wrap=True)
            self.progress.start()
        else:
            self.console.print(
                first or f"starting workers for {self.rounds} rounds ...", highlight=False, soft_wrap=True
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, row: Mapping[str, Any]) -> None:
        acc = row.get("test_accuracy", row.get("test_accuracy_mean"))
        status = f"acc={acc:.3f} " if acc is not None else ""
        if acc is None and row.get("test_loss") is not None:
            status = f"test_loss={row['test_loss']:.4g} "
        status += " ".join(f"{k}={row[k]}" for k in ("clients", "dropped") if k in row)
        if self.progress:
            self.progress.update(self.task, completed=row["round"], description="round", status=status)
        elif row["round"] % self.every == 0 or row["round"] == self.rounds:
            self.console.print(f"round {row['round']}/{self.rounds} {status} wall={row['wall_time_s']:.1f}s")


def check_machine(scenario: Scenario) -> None:
    """Settings this machine cannot honour fail before anything starts (not in ``validate``: a scenario
    written for a GPU machine is still a valid file)."""
    import torch

    if scenario.engine.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device", "'cpu' or 'auto' on a machine without a CUDA GPU", "cuda")


def run_scenario(
    scenario: Scenario, *, output_root: str | Path | None = None, show_progress: bool = True
) -> RunOutcome:
    """Run a scenario; results land in ``<output_root or output.dir>/<name>/<timestamp>/``.

    The metrics of finished rounds stay on disk whatever happens; on failure the report is still written for
    the rounds that completed, and the exception propagates.
    """
    from fedsim.engine.simulation import backend_workers, choose_backend, simulate

    check_registered_names(scenario)
    check_machine(scenario)
    backend = choose_backend(
        scenario
    )  # a backend setting that cannot work fails here, before anything starts
    privacy = None
    if scenario.privacy is not None:  # bad privacy settings fail here, before anything starts
        from fedsim.privacy.plan import plan_and_spend

        privacy = plan_and_spend(scenario)
    t0 = time.monotonic()
    path = new_run_dir(scenario, root=output_root)
    run_dir = RunDir(path, scenario)
    console = Console(file=sys.stderr, quiet=not show_progress)
    try:
        workers = backend_workers(scenario, backend)
        started = f"{workers} {backend.name} worker{'s' if workers > 1 else ''} ({backend.reason})"
        with _ProgressDisplay(console, scenario.planned_rounds, backend=started) as display:
            summary = simulate(scenario, run_dir, on_round=display, privacy=privacy, backend=backend)
    except BaseException:
        run_dir.close()
        if run_dir.rows:
            write_report(path, scenario, run_dir.rows, wall_s=time.monotonic() - t0, privacy=privacy)
        raise
    run_dir.close()
    wall = time.monotonic() - t0
    write_report(path, scenario, run_dir.rows, wall_s=wall, privacy=privacy)
    return RunOutcome(path=path, summary=summary, wall_s=wall)
