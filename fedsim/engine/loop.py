"""The loop protocol: what one strategy family implements so that the run driver can run it.

Why this module exists: the FedAvg family, the event-driven strategies, gossip and DIFF2/DP-GD run differently
(rounds, a virtual clock, supersteps between worker-held nodes, full-batch rounds with worker state), but what
surrounds a step is the same for all of them: preparation, placement, transport with deadlines, timings,
evaluation cadence, metrics rows, checkpoints and resume, stopping on a signal, progress and the DP release rule.
The driver (``fedsim.engine.driver``) owns all of that; a family owns only its steps and its state, behind
:class:`Loop`. A new family is one module with a :data:`LoopFactory` named in :data:`FAMILIES` (and its worker
handler); the driver is not edited.

A strategy names its family in a ``family`` class attribute (``"sync"``, ``"event"``, ``"gossip"``,
``"diff2"``): the driver looks the loop up by that name instead of testing the strategy's type.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from fedsim.data import FederatedData
from fedsim.errors import ConfigError
from fedsim.scenario import Scenario
from fedsim.scenario.devices import DeviceProfiles

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from fedsim.engine.placement import NodeIdentity
    from fedsim.engine.server import Engine
    from fedsim.privacy.plan import PrivacyPlan, Spend


@dataclass
class RunContext:
    """What the driver prepared for a family's loop: the scenario, the workers and the transport to them, the
    central data and model, the clients' device profiles and, for a DP run, its plan and spend."""

    scenario: Scenario
    engine: Engine
    grid: Grid
    nodes: Sequence[int]
    identities: Mapping[int, NodeIdentity]
    owners: Mapping[int, int] | None
    data: FederatedData
    model: nn.Module
    params: dict[str, torch.Tensor]
    profiles: DeviceProfiles
    privacy: tuple[PrivacyPlan, Spend] | None = None

    @property
    def model_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.params.values())

    def evaluation_due(self, step: int, *, last: bool) -> bool:
        """Whether step ``step`` (1-based) is evaluated: every ``evaluation.every`` steps, and the last."""
        return step % self.scenario.evaluation.every == 0 or last


@dataclass
class StepResult:
    """One step's outcome. ``row``: the family's metrics (the driver adds the step's timings, the evaluation and
    the wall clock); ``index``: the step's number (1-based; the row's ``round``); ``last``: no step follows.
    ``t_replies``/``t_aggregated``: monotonic readings when the replies were in and when the model was updated
    (None: not split); ``train_s``: the slowest worker's training seconds."""

    row: dict[str, Any]
    index: int
    last: bool
    evaluate: bool
    train_s: float = 0.0
    t_replies: float | None = None
    t_aggregated: float | None = None
    extra_timings: dict[str, float] = field(default_factory=dict)


class Loop(Protocol):
    """One strategy family's steps and state (built by its :data:`LoopFactory` once the workers are ready)."""

    family: ClassVar[str]
    privacy_levels: ClassVar[frozenset[str]]
    """The DP levels the family implements (noise, accounting, secret cohorts); the driver refuses the others."""

    def step(self) -> StepResult | None:
        """Run the next step; None when the run is complete."""

    def evaluate(self) -> dict[str, Any]:
        """Test metrics of the current model(s) for the step just run (``test_loss``, ``test_accuracy``, ...)."""

    def result(self) -> tuple[dict[str, torch.Tensor], Any]:
        """The model so far (what ``model.pt`` holds) and the strategy state to checkpoint with it."""

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything the rest of the run depends on besides :meth:`result` (random streams, clocks, queues,
        state the workers keep), as tensors, numbers and containers of them: what a checkpoint holds."""

    def restore(
        self, state: Mapping[str, Any], strategy_state: Any, params: Mapping[str, torch.Tensor]
    ) -> None:
        """Continue from a checkpoint's :meth:`checkpoint_state` and :meth:`result` (the next :meth:`step` is the one after)."""


LoopFactory = Callable[[RunContext, Any], Loop]
"""Builds a family's loop from the prepared run and the scenario's strategy."""

FAMILIES: Mapping[str, str] = {
    "sync": "fedsim.engine.sync_loop:SyncLoop",
    "event": "fedsim.engine.event_loop:make_event_loop",
    "gossip": "fedsim.engine.gossip_loop:GossipLoop",
    "diff2": "fedsim.engine.diff2_loop:Diff2Loop",
}
"""Each strategy family's loop factory, imported when a run of that family starts."""


def family_of(strategy: Any) -> str:
    """The family a strategy declares (its ``family`` attribute)."""
    family = getattr(strategy, "family", None)
    if family not in FAMILIES:
        raise TypeError(
            f"{type(strategy).__name__} declares no known family ({sorted(FAMILIES)}): got {family!r}"
        )
    return str(family)


def loop_factory(family: str) -> LoopFactory:
    """The factory of ``family``'s loop (its module imported now)."""
    module, _, name = FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def privacy_levels(family: str) -> frozenset[str]:
    """The DP levels ``family``'s loop implements."""
    return loop_factory(family).privacy_levels  # type: ignore[attr-defined]


def check_privacy(scenario: Scenario, family: str) -> None:
    """Refuse a DP scenario whose family's loop does not implement its level: such a run would add no noise and
    still write an ε. Validation refuses it too, but the Flower App's ``scenario-json`` path skips validation.

    Raises:
        ConfigError: naming ``privacy`` and the loop.
    """
    levels = privacy_levels(family)
    if scenario.privacy is None or scenario.privacy.level in levels:
        return
    raise ConfigError(
        "privacy",
        f"null with strategy {scenario.strategy.name!r}: its {family} loop implements "
        + (
            f"DP level {' or '.join(map(repr, sorted(levels)))} only" if levels else "no differential privacy"
        ),
        scenario.privacy.level,
    )


def cpu_state(value: Any) -> Any:
    """``value`` with every tensor detached, cloned and moved to the CPU (what a checkpoint may hold)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: cpu_state(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuple
        return type(value)(*(cpu_state(v) for v in value))
    if isinstance(value, list | tuple):
        return type(value)(cpu_state(v) for v in value)
    return value
