"""Which backend runs a scenario: a pure function of the scenario, shared by validation and the run.

Why this module exists: ``fedsim validate`` must refuse what the run would refuse (``engine.backend:
inprocess`` with a setting only Ray workers honour) without importing Flower, Ray or the engine's loop; the run
uses the same :func:`choose_backend` to pick ``ray`` or ``inprocess`` and say why in its first progress line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedsim.errors import ConfigError
from fedsim.scenario.schema import Scenario
from strategies.diff2 import DIFF2_NAMES

AUTO_INPROCESS_MAX_CLIENT_EPOCHS = 256
"""``backend: auto`` runs in process when a round trains at most this many client-epochs (clients per round ×
``client.epochs``): such a round takes well under a second on one core, so Ray's start-up (~10 s) and per-message
costs would outweigh what several worker processes could gain."""

FULL_PARTICIPATION = ("gossip", *DIFF2_NAMES)
"""Strategies in which every client of the population works at every round (or gossip tick)."""


@dataclass(frozen=True)
class BackendChoice:
    """The backend a run uses and why (the progress output's first line says both)."""

    name: Literal["ray", "inprocess"]
    reason: str


def round_client_epochs(scenario: Scenario) -> int:
    """Client-epochs one round trains: ``clients_per_round × client.epochs``; the whole population for gossip
    and DIFF2 / DP-GD, where every client works every round."""
    full = scenario.strategy.name in FULL_PARTICIPATION
    clients = scenario.population.clients if full else scenario.strategy.clients_per_round
    return clients * scenario.client.epochs


def choose_backend(scenario: Scenario) -> BackendChoice:
    """``engine.backend``, with ``auto`` resolved: ``ray`` when the scenario needs Ray (``engine.ray_address``,
    ``engine.gpus_per_worker > 0``) or asks for several worker processes (``engine.workers`` an integer > 1), or
    when a round trains more than :data:`AUTO_INPROCESS_MAX_CLIENT_EPOCHS` client-epochs; ``inprocess``
    otherwise. A pure function of the scenario (the machine does not enter).

    Raises:
        ConfigError: ``inprocess`` was asked for with a setting only Ray workers can honour.
    """
    eng = scenario.engine
    ray_only = {"engine.ray_address": eng.ray_address, "engine.gpus_per_worker": eng.gpus_per_worker or None}
    given = [(key, value) for key, value in ray_only.items() if value is not None]
    if eng.backend == "inprocess":
        if given:
            raise ConfigError(
                given[0][0], "unset with engine.backend 'inprocess' (only Ray workers use it)", given[0][1]
            )
        return BackendChoice("inprocess", "engine.backend: inprocess")
    if eng.backend == "ray":
        return BackendChoice("ray", "engine.backend: ray")
    if given:
        return BackendChoice("ray", f"auto: {given[0][0]} is set")
    if eng.workers != "auto" and int(eng.workers) > 1:
        return BackendChoice("ray", f"auto: engine.workers is {eng.workers}")
    work = round_client_epochs(scenario)
    if work > AUTO_INPROCESS_MAX_CLIENT_EPOCHS:
        return BackendChoice(
            "ray", f"auto: {work} client-epochs per round > {AUTO_INPROCESS_MAX_CLIENT_EPOCHS}"
        )
    return BackendChoice(
        "inprocess", f"auto: {work} client-epochs per round <= {AUTO_INPROCESS_MAX_CLIENT_EPOCHS}"
    )
