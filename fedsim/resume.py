"""Finding where a stopped run continues from: ``fedsim run --resume RUN_DIR``.

A results folder holds the scenario as the run resolved it (``scenario.yaml``) and its newest checkpoints
(``checkpoints/round-<n>.pt``, written atomically by ``fedsim.results.RunDir``). The newest checkpoint that can
be read is the resume point; it must have been written by this fedsim for exactly this scenario (its
fingerprint), else resuming is refused in one line: a continuation under other settings or code would not be
the run that was started.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim import __version__
from fedsim.errors import ConfigError, FedsimError
from fedsim.results import checkpoint_files
from fedsim.scenario import Scenario

FIELD = "--resume"
log = logging.getLogger("fedsim")


@dataclass(frozen=True)
class ResumePoint:
    """A results folder's scenario and the checkpoint it continues from (``state``: what the engine restores:
    the checkpoint's ``resume`` part with its ``params`` and ``strategy_state``)."""

    run_dir: Path
    scenario: Scenario
    checkpoint: Path
    state: Mapping[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def finished(self) -> bool:
        return bool(self.state["finished"])

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.state["rows"]]


def find_resume_point(run_dir: str | Path, *, scenario: Scenario | None = None) -> ResumePoint:
    """The newest readable checkpoint of ``run_dir`` and its scenario.

    ``scenario``: the scenario the user named with ``--resume`` (optional); it must be the run's.

    Raises:
        ConfigError: naming ``--resume``: no results folder, no checkpoint, a changed scenario, a checkpoint of
            another fedsim.
    """
    from fedsim.scenario import load_scenario

    path = Path(run_dir)
    stored = path / "scenario.yaml"
    if not stored.is_file():
        raise ConfigError(FIELD, "a results folder of `fedsim run` (holding scenario.yaml)", str(path))
    try:
        run_scenario = load_scenario(stored)
    except FedsimError as exc:
        raise ConfigError(
            FIELD, f"a results folder whose scenario.yaml is valid ({exc})", str(path)
        ) from None
    if scenario is not None and scenario.fingerprint() != run_scenario.fingerprint():
        raise ConfigError(
            FIELD,
            f"the scenario the run was started with ({stored}); the one given differs, and a run continues only "
            "under its own settings",
            str(path),
        )
    for checkpoint in reversed(checkpoint_files(path)):
        state = _read(checkpoint)
        if state is None:
            continue
        _check_compatible(state, run_scenario, checkpoint)
        return ResumePoint(path, run_scenario, checkpoint, state)
    raise ConfigError(
        FIELD,
        "a results folder with a checkpoint (none was written: the run stopped before its first one; start it "
        "again)",
        str(path),
    )


def _read(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's resume state, or None when the file cannot be read (an older one is tried)."""
    import torch

    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged file: fall back to the one before (writes are atomic, so rare)
        log.warning("fedsim: skipping unreadable checkpoint %s (%s)", checkpoint, exc)
        return None
    resume = payload.get("resume") if isinstance(payload, dict) else None
    if resume is None:
        raise ConfigError(
            FIELD, "a checkpoint that records how to resume (this one predates resuming)", str(checkpoint)
        )
    return {**resume, "params": payload["params"], "strategy_state": payload["strategy_state"]}


def _check_compatible(state: Mapping[str, Any], scenario: Scenario, checkpoint: Path) -> None:
    from fedsim.engine.driver import CHECKPOINT_FORMAT

    written_by = state.get("fedsim_version")
    if written_by != __version__ or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            FIELD,
            f"a checkpoint written by this fedsim ({__version__}, checkpoint format {CHECKPOINT_FORMAT}); "
            f"{checkpoint.name} was written by fedsim {written_by} (format {state.get('format')})",
            str(checkpoint.parent.parent),
        )
    if state.get("scenario") != scenario.fingerprint():
        raise ConfigError(
            FIELD,
            f"a results folder whose scenario.yaml is the one its checkpoints were taken with; it was changed "
            f"since {checkpoint.name}",
            str(checkpoint.parent.parent),
        )
