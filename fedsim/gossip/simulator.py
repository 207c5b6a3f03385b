"""An in-process gossip-learning simulator on an integer virtual clock: one shard that owns every node.

Why this module exists: gossip learning has no global model; its state is the nodes' models plus the topology. This
module runs the authors' protocol without Ray or Flower, so merge rules and topologies can be studied (and tested)
on one machine at 1000 nodes. The protocol itself lives in :class:`fedsim.gossip.shard.GossipShard` (the engine
runs the same shards on its workers and passes the models between them): each online node trains one mini-batch
(or one epoch) at each of its events, U[lo, hi] ticks apart (or device-profile intervals), sends its model to its
neighbours (push), fetches theirs (pull) or both, and merges when its buffer holds as many models as it has
neighbours, or when ``timeout`` ticks have passed since its last merge and its buffer is not empty (so no merge
waits forever); then the buffer is cleared. Within a tick: events (availability, training, sending), deliveries,
merges, then evaluation. The client optimizer is a gradient-core chain (``clients.optimizers``) re-initialised at
every step, so only stateless optimizers (plain SGD) are exact. Models must have no buffers (no BatchNorm).
Evaluation (every ``eval_every`` ticks, from tick 0) reports the mean/std/min/max of node test accuracy, the
accuracy of the average of all node models, the consensus distance (mean L2 distance of node models to their
average) and each layer's weight variance averaged over nodes.

References:
    Tian, Al-Ars, Kitsak, Hofstee, "Vanishing Variance Problem in Fully Decentralized Neural-Network Systems",
    arXiv 2404.04616, 2024 (the protocol: one mini-batch per 8-12 ticks, push to all neighbours, merge on a full
    buffer). Ormándi, Hegedűs, Jelasity, "Gossip learning with linear models on fully distributed data",
    Concurrency and Computation 2013 (gossip learning).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from fedsim.data import FederatedData
from fedsim.errors import ConfigError
from fedsim.gossip.schedule import Schedule
from fedsim.gossip.shard import GossipShard, ProtocolConfig


@dataclass(frozen=True)
class GossipConfig(ProtocolConfig):
    """The protocol's settings plus the simulator's schedule and evaluation (ticks are the simulator's abstract
    time unit, as in the authors' simulator)."""

    interval: tuple[int, int] = (8, 12)
    availability: float = 1.0
    failure: float = 0.0
    eval_every: int = 50
    eval_chunk: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.schedule()
        for name in ("eval_every", "eval_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"gossip.{name}", "an integer >= 1", value)

    def protocol(self) -> ProtocolConfig:
        """The protocol part alone (what a shard takes)."""
        return ProtocolConfig(**{f.name: getattr(self, f.name) for f in fields(ProtocolConfig)})

    def schedule(self) -> Schedule:
        return Schedule(
            seed=self.seed,
            interval=tuple(self.interval),
            availability=self.availability,
            failure=self.failure,
        )


def independent_init(build: Callable[[int], nn.Module], nodes: int, seed: int) -> dict[str, torch.Tensor]:
    """Stack ``nodes`` models built by ``build(seed_i)`` with distinct seeds: uncorrelated initial models, the
    setting in which averaging makes the variance vanish."""
    return init_nodes(build, np.arange(nodes), seed)


def init_nodes(build: Callable[[int], nn.Module], nodes: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    """The independent initial models of the given node ids (node i from seed ``seed·1000003 + i``)."""
    models = [build(seed * 1_000_003 + int(i)) for i in nodes]
    names = [n for n, _ in models[0].named_parameters()]
    return {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names}


@torch.no_grad()
def evaluate_nodes(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk: int = 256,
) -> dict[str, Any]:
    """Metrics of stacked node models (no global model): node accuracies and mean test loss, the average model's
    accuracy, the consensus distance and the per-layer weight variance (mean over nodes)."""

    def one(p):
        logits = functional_call(model, p, (x,))
        return (logits.argmax(-1) == y).double().mean(), nn.functional.cross_entropy(logits, y).double()

    fwd = vmap(one)
    n = len(next(iter(params.values())))
    parts = [fwd({k: t[s : s + chunk] for k, t in params.items()}) for s in range(0, n, chunk)]
    acc, loss = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
    mean = {k: t.double().mean(0) for k, t in params.items()}
    avg_acc = functional_call(model, {k: m.float() for k, m in mean.items()}, (x,)).argmax(-1) == y
    sq = sum((t.double() - mean[k]).flatten(1).square().sum(1) for k, t in params.items())
    row: dict[str, Any] = {
        "test_accuracy_mean": float(acc.mean()),
        "test_accuracy_std": float(acc.std(correction=0)),
        "test_accuracy_min": float(acc.min()),
        "test_accuracy_max": float(acc.max()),
        "test_accuracy_avg_model": float(avg_acc.double().mean()),
        "test_loss_mean": float(loss.mean()),
        "consensus_distance": float(sq.sqrt().mean()),  # type: ignore[union-attr]
    }
    for k, t in params.items():
        if t.dim() > 1:  # every layer tensor (not stacked scalars)
            row[f"layer_var/{k}"] = float(t.double().flatten(1).var(1, correction=0).mean())
    return row


class GossipSimulator:
    """N nodes in one process, parameters stacked ``[N, ...]``; :meth:`run` advances the clock.

    Args:
        model: the architecture (its own weights are not used; ``functional_call`` runs it on node weights).
        data: the nodes' data: node i trains on ``data.partitions[i]``; evaluation uses ``data.test_x/test_y``.
        neighbours: node i's neighbour ids (``fedsim.gossip.topology.neighbour_lists``).
        params: the stacked initial models (e.g. :func:`independent_init`); copied, never modified.
        config: the protocol's settings.
        schedule: event times and availability (default: ``config``'s U[lo, hi] and availability).
    """

    def __init__(
        self,
        model: nn.Module,
        data: FederatedData,
        neighbours: Sequence[np.ndarray],
        params: Mapping[str, torch.Tensor],
        config: GossipConfig,
        schedule: Schedule | None = None,
    ) -> None:
        n = len(neighbours)
        if len(data.partitions) < n:
            raise ConfigError(
                "gossip.nodes", f"at most the number of data partitions ({len(data.partitions)})", n
            )
        if any(t.shape[0] != n for t in params.values()):
            raise ValueError(
                f"params must be stacked over the {n} nodes. Got {[tuple(t.shape) for t in params.values()]}."
            )
        self.model, self.data, self.cfg = model, data, config
        self.shard = GossipShard(
            model, data, neighbours, np.arange(n), params, config.protocol(), schedule or config.schedule()
        )
        self.tick = 0
        self._next_eval = 0
        self.rows: list[dict[str, Any]] = []
        self._losses: list[float] = []

    @property
    def nodes(self) -> int:
        return len(self.shard.owned)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return self.shard.params

    @property
    def buffers(self) -> list[list[int]]:
        return self.shard.buffers

    @property
    def online(self) -> np.ndarray:
        return self.shard.online

    @property
    def last_merge(self) -> np.ndarray:
        return self.shard.last_merge

    @property
    def counts(self) -> dict[str, int]:
        return self.shard.counts

    def step(self) -> None:
        """Process the current tick: events (availability, training, sending), deliveries, merges."""
        self.shard.phase_a(self.tick)
        self.shard.phase_b(self.tick)

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the node models now (no global model: node accuracies and the average model's)."""
        self._losses += self.shard.take_losses()
        row = {
            "tick": self.tick,
            **self.counts,
            "train_loss": float(np.mean(self._losses)) if self._losses else None,
            **evaluate_nodes(
                self.model, self.params, self.data.test_x, self.data.test_y, chunk=self.cfg.eval_chunk
            ),
            "online": int(self.online.sum()),
        }
        self._losses = []
        return row

    def advance(self, end: int) -> bool:
        """Process the next tick at which something happens, if it is at most ``end``; whether one was."""
        nxt = min(self.shard.next_tick(self.tick), self._next_eval)
        if nxt > end:
            return False
        self.tick = nxt
        self.step()
        if self.tick == self._next_eval:
            self.rows.append(self.evaluate())
            self._next_eval += self.cfg.eval_every
        return True

    def run(self, ticks: int) -> list[dict[str, Any]]:
        """Advance the clock to ``self.tick + ticks``; return one metrics row per evaluation tick (from tick 0)."""
        end = self.tick + ticks
        first = len(self.rows)
        start = time.perf_counter()
        while self.advance(end):
            if len(self.rows) > first and "wall_time_s" not in self.rows[-1]:
                self.rows[-1]["wall_time_s"] = round(time.perf_counter() - start, 4)
        self.tick = end
        return self.rows[first:]
