"""Orchestration of ``fedsim run``: results folder, progress display, simulation, report."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedsim.engine.preflight import check_before_run
from fedsim.engine.rounds import RunSummary
from fedsim.errors import ConfigError, EngineError
from fedsim.report import write_report
from fedsim.results import RunDir, checkpoint_files, new_run_dir
from fedsim.resume import ResumePoint
from fedsim.scenario import Scenario
from fedsim.stopping import StopRequest, stop_on_signals
from fedsim.tally import closing_line, position, progress_status, step_line


@dataclass(frozen=True)
class RunOutcome:
    """Where a run's results are and how it ended (``rows``: the metrics rows it wrote)."""

    path: Path
    summary: RunSummary
    wall_s: float
    scenario: Scenario
    rows: Sequence[Mapping[str, Any]]

    def summary_line(self) -> str:
        """The closing line (``fedsim.tally.closing_line``): extent, warnings, last evaluation, results folder."""
        return closing_line(self.scenario, self.rows, wall_s=self.wall_s, results=self.path)


class ProgressDisplay:
    """A live bar on a terminal; on a pipe (CI, logs) a plain line every ~10% of the run. Counts rounds, or
    for gossip ticks (``fedsim.tally.position``)."""

    def __init__(self, console: Console, scenario: Scenario, *, backend: str = "") -> None:
        self.console, self.scenario, self.backend = console, scenario, backend
        self.unit, _, self.total = position(scenario, {})
        self.every = max(1, scenario.planned_rounds // 10)  # in rows: rounds, or gossip's evaluations
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
            self.task = self.progress.add_task("starting workers", total=self.total, status="")

    def __enter__(self) -> ProgressDisplay:
        workers = self.backend or "workers"
        first = f"starting {workers} for {self.total} {self.unit}s ..."
        self.console.print(first, highlight=False, soft_wrap=True)
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, row: Mapping[str, Any]) -> None:
        unit, done, total = position(self.scenario, row)
        if self.progress:
            self.progress.update(self.task, completed=done, description=unit, status=progress_status(row))
        elif int(row.get("round", 0)) % self.every == 0 or done == total:
            self.console.print(f"{step_line(self.scenario, row)} wall={row.get('wall_time_s', 0.0):.1f}s")


def check_machine(scenario: Scenario) -> None:
    """Settings this machine cannot honour fail before anything starts (not in ``validate``: a scenario
    written for a GPU machine is still a valid file)."""
    import torch

    if scenario.engine.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device", "'cpu' or 'auto' on a machine without a CUDA GPU", "cuda")


def run_scenario(
    scenario: Scenario,
    *,
    output_root: str | Path | None = None,
    show_progress: bool = True,
    resume: ResumePoint | None = None,
) -> RunOutcome:
    """Run a scenario; results land in ``<output_root or output.dir>/<name>/<timestamp>/``, or, with ``resume``,
    continue a stopped run in its own folder from its newest checkpoint.

    The metrics of finished rounds stay on disk whatever happens; on failure the report is still written for
    the rounds that completed, and the exception propagates. Ctrl-C, SIGTERM and SIGHUP stop the run at the next
    safe point with a checkpoint (``RunStopped``, which names it); a second one stops at once.
    """
    from fedsim.engine.simulation import backend_workers, choose_backend, simulate

    if resume is not None:
        scenario = resume.scenario
    check_before_run(scenario)
    check_machine(scenario)
    backend = choose_backend(
        scenario
    )  # a backend setting that cannot work fails here, before anything starts
    privacy = None
    if scenario.privacy is not None:  # bad privacy settings fail here, before anything starts
        from fedsim.dp_plan import scenario_plan_and_spend
        from fedsim.engine.setup import build_data

        privacy = scenario_plan_and_spend(scenario, build=lambda: build_data(scenario))
    t0 = time.monotonic()
    if resume is None:
        path = new_run_dir(scenario, root=output_root)
        run_dir = RunDir(path, scenario)
    else:
        path = resume.run_dir
        run_dir = RunDir(path, scenario, rows=resume.rows)
    wall_before = float(resume.state["wall_s"]) if resume is not None else 0.0
    console = Console(file=sys.stderr, quiet=not show_progress)
    stop = StopRequest()
    try:
        with stop_on_signals(stop):
            workers = backend_workers(scenario, backend)
            started = f"{workers} {backend.name} worker{'s' if workers > 1 else ''} ({backend.reason})"
            if resume is not None:
                started += f", resuming after {resume.step}"
            with ProgressDisplay(console, scenario, backend=started) as display:
                summary = simulate(
                    scenario, run_dir, on_round=display, privacy=privacy, backend=backend, stop=stop,
                    resume=resume.state if resume is not None else None,
                )  # fmt: skip
    except BaseException as exc:
        run_dir.close()
        if run_dir.rows:
            wall = wall_before + time.monotonic() - t0
            write_report(path, scenario, run_dir.rows, wall_s=wall, privacy=privacy)
        if isinstance(exc, EngineError) and checkpoint_files(path):  # a worker lost, a deadline missed
            raise EngineError(
                f"{exc}. The run can continue from its newest checkpoint: fedsim run --resume {path}"
            ) from None
        raise
    run_dir.close()
    wall = wall_before + time.monotonic() - t0
    write_report(path, scenario, run_dir.rows, wall_s=wall, privacy=privacy)
    return RunOutcome(path=path, summary=summary, wall_s=wall, scenario=scenario, rows=run_dir.rows)
