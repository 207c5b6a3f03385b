"""Submit a scenario to a SuperLink with ``flwr run`` and follow it: the remote case, and the last step of a local one.

The run gets the resolved scenario itself (run config ``scenario-json``), so the file need not exist where the
ServerApp runs. The ServerApp prints every metrics row into the run's log; following the streamed log, this side
shows progress and, for a remote SuperLink, keeps its own copy of the results folder (metrics and report) —
the ServerApp's own folder is on the SuperLink's machine.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from rich.console import Console

import fedsim
from fedsim.deploy.commands import NO_DEPENDENCY_INSTALL_ENV, SuperLinkAddress, connection_toml, run_command
from fedsim.deploy.processes import Processes, last_lines, terminate_as_interrupt
from fedsim.engine.rounds import RunSummary
from fedsim.errors import ConfigError, DeployError
from fedsim.flower_app import DONE_PREFIX, METRICS_PREFIX
from fedsim.report import write_report
from fedsim.results import RunDir, new_run_dir
from fedsim.run import ProgressDisplay, RunOutcome
from fedsim.scenario import Scenario
from fedsim.tally import planned_rows

CONNECTION = "fedsim"


def parse_address(value: str, *, option: str = "--superlink") -> SuperLinkAddress:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) as a :class:`SuperLinkAddress`.

    Raises:
        ConfigError: not of that shape.
    """
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(option, "HOST:PORT with a port in 1..65535, e.g. 192.168.1.10:9093", value)
    return SuperLinkAddress(host, int(port))


def find_app_dir() -> Path:
    """The Flower App to submit: the fedsim source tree (its pyproject.toml has ``[tool.flwr.app]``).

    Raises:
        DeployError: fedsim is installed without its source tree.
    """
    root = Path(fedsim.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text(encoding="utf-8"):
        raise DeployError(
            f"fedsim deploy submits the fedsim source tree as a Flower App; no pyproject.toml with "
            f"[tool.flwr.app] next to {root / 'fedsim'} (install fedsim from a checkout: pip install -e .)"
        )
    return root


def deployment_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process of a deployment: this Python's scripts first on PATH (the
    SuperLink starts ``flower-superexec`` by name), a private FLWR_HOME, no telemetry, no per-run installs."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        **NO_DEPENDENCY_INSTALL_ENV,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        # SuperExecs look for new ClientApp/ServerApp tasks every 1 s by default; 0.2 s shortens every round.
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
    }


def write_connection(flwr_home: Path, address: SuperLinkAddress, ca_cert: Path | None) -> None:
    """Name the SuperLink for the ``flwr`` CLI in ``$FLWR_HOME/config.toml``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(connection_toml(CONNECTION, address, ca_cert), encoding="utf-8")


def write_run_config(
    path: Path, scenario: Scenario, *, placement: str, expected_workers: int, run_dir: Path | None
) -> Path:
    """The run config overrides (a TOML file, so the scenario JSON needs no shell quoting)."""
    config: dict[str, Any] = {
        "scenario-json": json.dumps(scenario.model_dump(mode="json"), sort_keys=True),
        "placement": placement,
        "expected-workers": expected_workers,
    }
    if run_dir is not None:
        config["run-dir"] = str(run_dir.resolve())
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


@dataclass
class FollowedRun:
    """What the streamed log of a run said: its metrics rows, whether the ServerApp said it was done and how many
    rows it wrote by then (the run's own count: a FedFix run may stop at ``horizon_s`` before ``rounds``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    done_line: str = ""
    rows_written: int = 0
    run_id: str = ""

    def finished(self, rows: int) -> bool:
        """Whether the ServerApp finished and ``rows`` rows (a copy of its metrics) hold all it wrote."""
        return self.done and 0 < self.rows_written <= rows


def follow_run(
    procs: Processes,
    name: str,
    *,
    on_row: Callable[[Mapping[str, Any]], None],
    check: Callable[[FollowedRun], None] = lambda run: None,
    poll_s: float = 0.3,
) -> FollowedRun:
    """Read the log of the ``flwr run --stream`` process ``name`` until it exits; hand each metrics row to
    ``on_row``. ``check`` runs every poll (e.g. to fail fast when a SuperLink died)."""
    run, offset, pending = FollowedRun(), 0, ""
    while True:
        finished = procs.exited(name) is not None
        with procs.log(name).open("rb") as f:
            f.seek(offset)
            chunk = f.read()
        offset += len(chunk)
        pending += chunk.decode(errors="replace")
        *complete, pending = pending.split("\n")
        for line in complete:
            if line.startswith(METRICS_PREFIX):
                row = json.loads(line[len(METRICS_PREFIX) :])
                run.rows.append(row)
                on_row(row)
            elif line.startswith("fedsim: done:"):
                run.done_line = line.strip()
            elif line.startswith(DONE_PREFIX):
                run.done, run.rows_written = True, int(json.loads(line[len(DONE_PREFIX) :])["rows"])
            elif line.startswith("Successfully started run "):
                run.run_id = line.split()[3]
        if finished:
            return run
        check(run)
        time.sleep(poll_s)


def run_failure(procs: Processes, name: str, run: FollowedRun, scenario: Scenario) -> DeployError:
    """One line for a run that ended without finishing: the ServerApp's error, as the streamed log shows it."""
    lines = last_lines(procs.log(name), 200)
    errors = [l for l in lines if "Error" in l or "error" in l or "failed" in l.lower()]
    reason = errors[-1] if errors else (lines[-1] if lines else "no output")
    return DeployError(
        f"the run stopped after {len(run.rows)} of {planned_rows(scenario)}: {reason} (log: {procs.log(name)})"
    )


def submit_and_follow(
    procs: Processes,
    *,
    app_dir: Path,
    run_config: Path,
    on_row: Callable[[Mapping[str, Any]], None],
    check: Callable[[FollowedRun], None] = lambda run: None,
) -> FollowedRun:
    """Start ``flwr run APP fedsim --stream`` as one of ``procs`` and follow it until the run ends."""
    procs.start("flwr-run", run_command(app_dir, CONNECTION, run_config), cwd=app_dir)
    return follow_run(procs, "flwr-run", on_row=on_row, check=check)


def deploy_remote(
    scenario: Scenario,
    *,
    superlink: str,
    ca_cert: Path | None,
    insecure: bool = False,
    expected_workers: int = 0,
    output_root: str | Path | None = None,
    show_progress: bool = True,
) -> RunOutcome:
    """Submit ``scenario`` to an existing SuperLink and follow it; keep a local copy of its metrics and report.

    Raises:
        ConfigError: bad options (checked before anything is sent).
        DeployError: the run did not finish (the rounds that did are in the local copy).
    """
    address = parse_address(superlink)
    if insecure == (ca_cert is not None):
        raise ConfigError(
            "--root-certificates", "the SuperLink's CA certificate (PEM), or --insecure asked for; exactly one",
            str(ca_cert) if ca_cert else None,
        )  # fmt: skip
    if ca_cert is not None and not ca_cert.is_file():
        raise ConfigError("--root-certificates", "an existing PEM file", str(ca_cert))
    if expected_workers < 0:
        raise ConfigError(
            "--expect", "a number of SuperNodes >= 0 (0: until their number settles)", expected_workers
        )
    app = find_app_dir()
    t0 = time.monotonic()
    path = new_run_dir(scenario, root=output_root)
    run_dir = RunDir(path, scenario)
    deploy_dir = path / "deploy"
    write_connection(deploy_dir / "flwr-home", address, None if ca_cert is None else ca_cert.resolve())
    procs = Processes(deploy_dir / "logs", deployment_env(deploy_dir / "flwr-home"))
    run_config = write_run_config(
        deploy_dir / "run-config.toml",
        scenario,
        placement="auto",
        expected_workers=expected_workers,
        run_dir=None,
    )
    console = Console(file=sys.stderr, quiet=not show_progress)

    def on_row(row: Mapping[str, Any]) -> None:
        run_dir.write_round(row)
        display(row)

    run = FollowedRun()
    try:
        with terminate_as_interrupt(), ProgressDisplay(console, scenario) as display:
            run = submit_and_follow(procs, app_dir=app, run_config=run_config, on_row=on_row)
    finally:
        procs.stop()
        run_dir.close()
        if run_dir.rows:
            write_report(path, scenario, run_dir.rows, wall_s=time.monotonic() - t0)
    if not run.finished(len(run_dir.rows)):
        raise run_failure(procs, "flwr-run", run, scenario)
    (deploy_dir / "serverapp.txt").write_text(
        run.done_line + "\n", encoding="utf-8"
    )  # where the server kept its copy
    return RunOutcome(
        path=path,
        summary=RunSummary(rounds=len(run_dir.rows), last_row=run_dir.rows[-1]),
        wall_s=time.monotonic() - t0,
        scenario=scenario,
        rows=run_dir.rows,
    )
