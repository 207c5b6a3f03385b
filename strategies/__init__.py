"""Server strategies over logical clients (hooks with explicit state; no Ray import).

``STRATEGIES`` is the registry a scenario's ``strategy.name`` resolves through; ``build_strategy`` builds one
from the scenario's ``strategy`` block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsim.registry import Registry
from strategies.asynchronous import RULE_NAMES, EventStrategy, make_event_strategy
from strategies.base import AggregateResult, ReducedUpdates, RoundPlan, Strategy
from strategies.fedavg import FedAvg, make_fedavg_family

STRATEGIES: Registry[Callable[..., Strategy | EventStrategy]] = Registry("strategy.name")
for _name in ("fedavg", "fedavgm", "fedadam", "fedyogi"):
    STRATEGIES.add(_name, make_fedavg_family(_name))
for _name in RULE_NAMES:
    STRATEGIES.add(_name, make_event_strategy(_name))


def build_strategy(cfg: Any, population: int | None = None) -> Strategy | EventStrategy:
    """Build the strategy described by a scenario's ``strategy`` block (event-driven ones, which the engine runs
    on its virtual clock, also need the ``population`` size)."""
    factory = STRATEGIES.get(cfg.name)
    kwargs = {"population": population or cfg.clients_per_round} if cfg.name in RULE_NAMES else {}
    return factory(
        clients_per_round=cfg.clients_per_round,
        args=dict(cfg.args),
        server_optimizer={"name": cfg.server_optimizer.name, **cfg.server_optimizer.kwargs()},
        **kwargs,
    )


__all__ = [
    "STRATEGIES",
    "EventStrategy",
    "AggregateResult",
    "FedAvg",
    "ReducedUpdates",
    "RoundPlan",
    "Strategy",
    "build_strategy",
]
