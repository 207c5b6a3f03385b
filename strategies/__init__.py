"""Server strategies over logical clients (hooks with explicit state; no Ray import).

``STRATEGIES`` is the registry a scenario's ``strategy.name`` resolves through; ``build_strategy`` builds one
from the scenario's ``strategy`` block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsim.registry import Registry
from strategies.base import AggregateResult, ReducedUpdates, RoundPlan, Strategy
from strategies.fedavg import FedAvg, make_fedavg_family

STRATEGIES: Registry[Callable[..., Strategy]] = Registry("strategy.name")
for _name in ("fedavg", "fedavgm", "fedadam", "fedyogi"):
    STRATEGIES.add(_name, make_fedavg_family(_name))


def build_strategy(cfg: Any) -> Strategy:
    """Build the strategy described by a scenario's ``strategy`` block."""
    factory = STRATEGIES.get(cfg.name)
    return factory(
        clients_per_round=cfg.clients_per_round,
        args=dict(cfg.args),
        server_optimizer={"name": cfg.server_optimizer.name, **cfg.server_optimizer.kwargs()},
    )


__all__ = [
    "STRATEGIES",
    "AggregateResult",
    "FedAvg",
    "ReducedUpdates",
    "RoundPlan",
    "Strategy",
    "build_strategy",
]
