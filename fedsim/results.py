"""The results folder of a run: ``<output.dir>/<name>/<timestamp>/``.

Written as the run goes, so nothing is lost on a crash or Ctrl-C: the resolved scenario first, one
``metrics.jsonl`` line per round (flushed), checkpoints (atomic, owner-only, the newest few kept), and finally
``report.md`` with plots.
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
    """A results folder being written; implements the engine's ``Recorder`` protocol.

    ``rows``: the rows to start from when a run is resumed (``metrics.jsonl`` is rewritten to hold exactly them:
    rows written after the checkpoint are computed again)."""

    def __init__(self, path: Path, scenario: Scenario, *, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.scenario = scenario
        (path / "checkpoints").mkdir(exist_ok=True)
        self.metrics_path = path / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        if rows is None:
            (path / "scenario.yaml").write_text(
                yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
            )
        else:
            self.rows = [{k: _json_safe(v) for k, v in row.items()} for row in rows]
            text = "".join(json.dumps(row) + "\n" for row in self.rows)
            write_atomically(self.metrics_path, lambda f: f.write(text.encode("utf-8")), mode=0o644)
        self._metrics = self.metrics_path.open("a", encoding="utf-8")

    def write_round(self, row: Mapping[str, Any]) -> None:
        clean = {k: _json_safe(v) for k, v in row.items()}
        self._metrics.write(json.dumps(clean) + "\n")
        self._metrics.flush()
        self.rows.append(clean)

    def save_checkpoint(
        self,
        *,
        round: int,
        params: Mapping[str, torch.Tensor],
        strategy_state: Any,
        final: bool = False,
        resume: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save ``checkpoints/round-<n>.pt`` (model, strategy state and what resuming needs) atomically and
        readable by the owner only (it holds the run's secret noise and cohort streams); keep the newest
        ``output.keep_checkpoints``. The run's final one is also written as ``model.pt`` (whenever the run ends:
        a FedFix run that reaches ``horizon_s`` ends before its planned rounds)."""
        payload = {"round": round, "params": dict(params), "strategy_state": strategy_state, "resume": resume}
        target = self.path / "checkpoints" / f"round-{round}.pt"
        write_atomically(target, lambda f: torch.save(payload, f), mode=0o600)
        if final:
            write_atomically(self.path / "model.pt", lambda f: torch.save(dict(params), f), mode=0o644)
        self.prune(keep=target)
        return target

    def prune(self, *, keep: Path) -> None:
        """Delete all but the newest ``output.keep_checkpoints`` checkpoints (never ``keep``)."""
        kept = checkpoint_files(self.path)[-self.scenario.output.keep_checkpoints :]
        for old in checkpoint_files(self.path):
            if old not in kept and old != keep:
                old.unlink(missing_ok=True)

    def close(self) -> None:
        self._metrics.close()


def checkpoint_files(run_dir: Path) -> list[Path]:
    """A results folder's checkpoints, oldest first (by step)."""
    found = []
    for path in (run_dir / "checkpoints").glob("round-*.pt"):
        step = path.stem.removeprefix("round-")
        if step.isdigit():
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def write_atomically(target: Path, write: Any, *, mode: int) -> None:
    """Write ``target`` through a temporary file in its folder, flushed to disk, then renamed over it: a write
    that is killed leaves the previous file whole (at worst a stray ``.tmp`` file)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
