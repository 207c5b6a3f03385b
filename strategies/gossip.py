"""``strategy.name: gossip``: decentralised gossip learning has no server strategy to run.

Why this module exists: a scenario names its strategy through one registry; for gossip the engine runs the
protocol of the scenario's ``gossip`` block (``fedsim.gossip``, ``fedsim.engine.gossip_loop``) instead of a
server loop, and this marker is what the registry gives back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedsim.errors import ConfigError


@dataclass(frozen=True)
class Decentralised:
    """Marker: no global model; the nodes train, exchange and merge (settings in the scenario's ``gossip`` block)."""

    family: ClassVar[str] = "gossip"
    """The loop that runs it (``fedsim.engine.loop.FAMILIES``)."""


def make_gossip(*, args: Mapping[str, Any], **_: Any) -> Decentralised:
    """The marker; gossip takes its settings from the ``gossip`` block, not ``strategy.args``."""
    if args:
        raise ConfigError(
            f"strategy.args.{next(iter(args))}",
            "empty for gossip (its settings go in the gossip block)",
            dict(args),
        )
    return Decentralised()
