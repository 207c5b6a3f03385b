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
from strategies.diff2 import DIFF2_NAMES, Diff2Strategy, make_diff2_strategy
from strategies.fedavg import FedAvg, make_fedavg_family
from strategies.gossip import Decentralised, make_gossip

STRATEGIES: Registry[Callable[..., Strategy | EventStrategy | Diff2Strategy]] = Registry("strategy.name")
for _name in ("fedavg", "fedavgm", "fedadam", "fedyogi"):
    STRATEGIES.add(_name, make_fedavg_family(_name))
for _name in RULE_NAMES:
    STRATEGIES.add(_name, make_event_strategy(_name))
STRATEGIES.add(
    "gossip", make_gossip
)  # decentralised: the engine runs the gossip block (fedsim.engine.gossip_loop)
for _name in DIFF2_NAMES:  # full-batch rounds with worker state (fedsim.engine.diff2_loop)
    STRATEGIES.add(_name, make_diff2_strategy(_name))


def build_strategy(cfg: Any, population: int | None = None) -> Strategy | EventStrategy | Diff2Strategy:
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
    "Decentralised",
    "Diff2Strategy",
    "FedAvg",
    "ReducedUpdates",
    "RoundPlan",
    "Strategy",
    "build_strategy",
]
