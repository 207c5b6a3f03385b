"""The repository as a Flower App: ``flwr run .`` runs a scenario in Flower's own runtime.

``[tool.flwr.app.components]`` in pyproject points here. The ServerApp reads the scenario named by the run
config key ``scenario`` (default ``scenarios/quickstart.yaml``; override with
``flwr run . --run-config 'scenario="scenarios/other.yaml"'``) and writes the usual results folder under
the run config key ``output-dir`` (default: the scenario's ``output.dir``). The ClientApp is fedsim's worker:
each SuperNode Flower starts hosts a share of the logical clients.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.engine.server import Engine
from fedsim.engine.worker import client_app
from fedsim.report import write_report
from fedsim.results import RunDir, new_run_dir
from fedsim.scenario import load_scenario

log = logging.getLogger("fedsim")


def resolve_scenario_path(name: str) -> Path:
    """A scenario path as given, else relative to the app's root (where ``scenarios/`` lives in the FAB)."""
    p = Path(name)
    if p.is_absolute() or p.exists():
        return p
    return Path(__file__).resolve().parents[1] / p


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario's rounds over whatever SuperNodes the runtime started."""
    t0 = time.monotonic()
    scenario = load_scenario(
        resolve_scenario_path(str(context.run_config.get("scenario", "scenarios/quickstart.yaml")))
    )
    out = context.run_config.get("output-dir") or scenario.output.dir
    path = new_run_dir(scenario, root=str(out))
    run_dir = RunDir(path, scenario)
    engine = Engine(scenario, run_dir, expected_workers=None)
    try:
        summary = engine.run(grid)
    finally:
        run_dir.close()
        if run_dir.rows:  # the engine's resolved DP plan, so the report does not calibrate σ again
            write_report(path, scenario, run_dir.rows, wall_s=time.monotonic() - t0, privacy=engine.privacy)
    acc = summary.last_row.get("test_accuracy")
    print(
        f"fedsim: done: rounds={summary.rounds} test_accuracy={acc:.4f} results={path.resolve()}", flush=True
    )


__all__ = ["client_app", "server_app"]
