"""The repository as a Flower App: ``flwr run .`` runs a scenario in Flower's own runtime.

``[tool.flwr.app.components]`` in pyproject points here for the ServerApp. The ServerApp reads the scenario named
by the run config key ``scenario`` (default ``scenarios/quickstart.yaml``; override with
``flwr run . --run-config 'scenario="scenarios/other.yaml"'``) and writes the usual results folder under
the run config key ``output-dir`` (default: the scenario's ``output.dir``). The ClientApp is fedsim's worker:
each SuperNode Flower starts hosts a share of the logical clients (the ClientApp component is
``fedsim.deploy.forward``, which runs this worker in its own process or hands the message to a warm daemon).

On the Deployment Runtime (``fedsim deploy``) the run config also says ``placement`` (``partition``: each
SuperNode owns the one client its ``--node-config partition-id`` names), ``expected-workers`` (how many
SuperNodes to wait for; 0: until their number settles) and ``run-dir`` (a results folder made beforehand,
where the deployment's certificates already are).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.engine.server import Engine
from fedsim.engine.worker import client_app
from fedsim.report import write_report
from fedsim.results import RunDir, new_run_dir
from fedsim.scenario import Scenario, load_scenario, parse_scenario
from fedsim.tally import closing_line, step_line

log = logging.getLogger("fedsim")


def resolve_scenario_path(name: str) -> Path:
    """A scenario path as given, else relative to the app's root (where ``scenarios/`` lives in the FAB)."""
    p = Path(name)
    if p.is_absolute() or p.exists():
        return p
    return Path(__file__).resolve().parents[1] / p


METRICS_PREFIX = "fedsim-metrics: "
"""Each round's metrics row also goes to the run's log as one JSON line after this prefix, so ``fedsim deploy``
can keep a local copy of a run whose ServerApp writes its results on another machine."""


DONE_PREFIX = "fedsim-done: "
"""When the ServerApp has finished, one JSON line after this prefix says how many metrics rows the run wrote, so
``fedsim deploy`` can tell a finished run (FedFix stopping at ``horizon_s``, gossip's evaluations) from a cut one."""


def round_line(scenario: Scenario, row: Mapping[str, Any]) -> str:
    """One line per metrics row in the run's log (what ``flwr run --stream`` and ``flwr log`` show)."""
    return f"fedsim: {step_line(scenario, row)}"


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario's rounds over whatever SuperNodes the runtime started."""
    t0 = time.monotonic()
    cfg = context.run_config
    if cfg.get("scenario-json"):  # `fedsim deploy` sends the resolved scenario (the file may not exist here)
        scenario = parse_scenario(json.loads(str(cfg["scenario-json"])), source="run config scenario-json")
    else:
        scenario = load_scenario(resolve_scenario_path(str(cfg.get("scenario", "scenarios/quickstart.yaml"))))
    out = cfg.get("output-dir") or scenario.output.dir
    path = Path(str(cfg["run-dir"])) if cfg.get("run-dir") else new_run_dir(scenario, root=str(out))
    run_dir = RunDir(path, scenario)
    engine = Engine(
        scenario,
        run_dir,
        expected_workers=int(cfg.get("expected-workers", 0)) or None,  # type: ignore[arg-type]
        placement=str(cfg.get("placement", "auto")),
        max_poll_s=0.1,  # Flower's own pace; spares the SuperLink a busy loop of pulls
        on_round=lambda row: print(
            round_line(scenario, row), METRICS_PREFIX + json.dumps(row), sep="\n", flush=True
        ),
    )
    try:
        engine.run(grid)
    finally:
        run_dir.close()
        if run_dir.rows:  # the engine's resolved DP plan, so the report does not calibrate σ again
            write_report(path, scenario, run_dir.rows, wall_s=time.monotonic() - t0, privacy=engine.privacy)
    line = closing_line(scenario, run_dir.rows, wall_s=time.monotonic() - t0, results=path.resolve())
    print(f"fedsim: {line}", DONE_PREFIX + json.dumps({"rows": len(run_dir.rows)}), sep="\n", flush=True)


__all__ = ["client_app", "server_app"]
