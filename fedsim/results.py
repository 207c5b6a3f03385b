"""The results folder of a run: ``<output.dir>/<name>/<timestamp>/``.

Written as the run goes, so nothing is lost on a crash or Ctrl-C: the resolved scenario first, one
``metrics.jsonl`` line per round (flushed), checkpoints, and finally ``report.md`` with plots.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from fedsim.errors import ConfigError
from fedsim.scenario import Scenario
from fedsim.scenario.checks import check_output_root


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def new_run_dir(scenario: Scenario, *, root: str | Path | None = None) -> Path:
    """Create a fresh, unique results folder for ``scenario`` (never reuses an existing one).

    Raises:
        ConfigError: the root (``--output`` or ``output.dir``) is, or lies under, a file, or cannot be written.
    """
    field = "--output" if root is not None else "output.dir"
    root = Path(root if root is not None else scenario.output.dir)
    check_output_root(root, scenario.name, field=field)
    base = root / scenario.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(
                field, f"a folder where results can be written ({exc.strerror})", str(root)
            ) from None
    raise ConfigError(field, f"a folder with room for a new results folder under {base}", str(root))


class RunDir:
    """A results folder being written; implements the engine's ``Recorder`` protocol."""

    def __init__(self, path: Path, scenario: Scenario) -> None:
        self.path = path
        self.scenario = scenario
        (path / "checkpoints").mkdir(exist_ok=True)
        (path / "scenario.yaml").write_text(
            yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
        )
        self.metrics_path = path / "metrics.jsonl"
        self._metrics = self.metrics_path.open("a", encoding="utf-8")
        self.rows: list[dict[str, Any]] = []

    def write_round(self, row: Mapping[str, Any]) -> None:
        clean = {k: _json_safe(v) for k, v in row.items()}
        self._metrics.write(json.dumps(clean) + "\n")
        self._metrics.flush()
        self.rows.append(clean)

    def save_checkpoint(
        self, *, round: int, params: Mapping[str, torch.Tensor], strategy_state: Any, final: bool = False
    ) -> None:
        """Save ``checkpoints/round-<n>.pt`` (model + strategy state); the run's final one also as ``model.pt``
        (whenever the run ends: a FedFix run that reaches ``horizon_s`` ends before its planned rounds)."""
        payload = {"round": round, "params": dict(params), "strategy_state": strategy_state}
        tmp = self.path / "checkpoints" / f".round-{round}.pt.tmp"
        # the strategy state holds the DP noise stream (DPState.noise): readable by the owner only
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            torch.save(payload, f)
        target = self.path / "checkpoints" / f"round-{round}.pt"
        tmp.replace(target)
        if final:
            torch.save(dict(params), self.path / "model.pt")

    def close(self) -> None:
        self._metrics.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
