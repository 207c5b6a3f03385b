"""Running a gossip network split over shards in supersteps: what each shard does next, and the mail between them.

Why this module exists: the engine keeps each gossip node on the worker that owns it, and exchanges only the
models that cross workers, once per tick, in one message per worker (not one Flower message per model). A tick
has two phases (``fedsim.gossip.shard``): models sent in phase A must reach every shard before phase B merges.
So superstep k asks each shard for phase B of tick t_{k−1} (with the other shards' mail of that tick), an
evaluation if t_{k−1} is an evaluation tick, then phase A of tick t_k; its answer carries the mail for the others.

The next tick t_k is the earliest tick at which any shard can act (each reports a lower bound, see
:meth:`GossipShard.next_tick`) or the next evaluation, and at most t_{k−1} + 1 when mail crossed shards at t_{k−1}
(a delivery can start a node's merge timeout, which its shard learns only in phase B). A tick at which nothing
happens changes nothing, so a lower bound is safe. Pull mode needs one more fact: which nodes pull at a tick, so
the shards owning their neighbours send those models in phase A; a node's next event is known at its previous one,
and shards report it. :class:`Coordinator` holds this logic without any transport: :func:`run_in_process` drives
shards in one process (a test oracle), ``fedsim.engine.gossip_loop`` drives them on Flower workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedsim.gossip.shard import GossipShard, Mail


@dataclass
class WorkOrder:
    """One shard's part of a superstep."""

    b_tick: int | None
    inbox: Mail | None
    evaluate: bool
    a_tick: int | None
    serve: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class ShardReport:
    """A shard's answer: its mail for the others (from phase A), the earliest tick it can act next, its pullers'
    next event ticks, its models when an evaluation was asked, its training losses since the last report, and its
    cumulative counters and online nodes (at the evaluated tick when there was one)."""

    mail: Mail
    next_tick: int
    pull_nodes: np.ndarray
    pull_ticks: np.ndarray
    params: dict[str, torch.Tensor] | None = None
    losses: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    online: int = 0


def execute(shard: GossipShard, order: WorkOrder) -> ShardReport:
    """Carry out one work order on a shard (what a worker does with its message)."""
    params, counts, online = None, dict(shard.counts), int(shard.online.sum())
    if order.b_tick is not None:
        shard.phase_b(order.b_tick, [order.inbox] if order.inbox is not None else [])
        if order.evaluate:  # the state at the evaluated tick, before the next tick's events
            params = {n: t.clone() for n, t in shard.params.items()}
            counts, online = dict(shard.counts), int(shard.online.sum())
    mail, pulled = Mail.empty(shard.params), np.zeros(0, dtype=np.int64)
    if order.a_tick is not None:
        pulled = shard.pullers_due(order.a_tick)  # their next events are known once phase A has run
        mail = shard.phase_a(order.a_tick, order.serve)
    elif order.b_tick == 0 and shard.cfg.pulls:
        pulled = shard.owned  # the first report: every node's first event
    local = shard.local[pulled]
    return ShardReport(
        mail=mail,
        next_tick=shard.next_tick(order.a_tick if order.a_tick is not None else (order.b_tick or 0)),
        pull_nodes=pulled,
        pull_ticks=shard.next_event[local],
        params=params,
        losses=shard.take_losses(),
        counts=counts,
        online=online,
    )


class Coordinator:
    """Plans supersteps for ``shards`` shards of a network (``owner[i]`` = the shard of node i) up to tick
    ``horizon``, evaluating every ``eval_every`` ticks from tick 0, and at the horizon."""

    def __init__(
        self,
        neighbours: Sequence[np.ndarray],
        owner: np.ndarray,
        shards: int,
        *,
        horizon: int,
        eval_every: int,
    ) -> None:
        self.neighbours = [np.asarray(a, dtype=np.int64) for a in neighbours]
        self.owner = np.asarray(owner, dtype=np.int64)
        self.shards, self.horizon, self.eval_every = shards, horizon, eval_every
        self.a_tick: int | None = None
        self.pull_at: dict[int, set[int]] = {}
        self.done = False

    def first(self) -> list[WorkOrder]:
        """Superstep 0: build the shards, evaluate tick 0."""
        return [WorkOrder(b_tick=0, inbox=None, evaluate=True, a_tick=None) for _ in range(self.shards)]

    def next(self, reports: Sequence[ShardReport]) -> list[WorkOrder] | None:
        """The next superstep's orders from the last one's reports (None once the run is over)."""
        if self.done:
            return None
        for r in reports:
            for node, tick in zip(r.pull_nodes.tolist(), r.pull_ticks.tolist(), strict=True):
                self.pull_at.setdefault(int(tick), set()).add(int(node))
        inboxes = self.route([r.mail for r in reports])
        b_tick = self.a_tick  # phase A of this tick ran in the last superstep: phase B now
        now = b_tick if b_tick is not None else 0
        next_eval = min((now // self.eval_every + 1) * self.eval_every, max(self.horizon, now + 1))
        nxt = min([r.next_tick for r in reports] + [next_eval])
        if any(len(m) for m in inboxes):
            nxt = min(nxt, now + 1)
        a_tick = nxt if nxt <= self.horizon else None
        if a_tick is None:
            self.done = True
            if b_tick is None:
                return None
        self.a_tick = a_tick
        evaluate = b_tick is not None and (b_tick % self.eval_every == 0 or b_tick == self.horizon)
        serve = self._serve(a_tick)
        return [
            WorkOrder(b_tick=b_tick, inbox=inboxes[s], evaluate=evaluate, a_tick=a_tick, serve=serve[s])
            for s in range(self.shards)
        ]

    def route(self, mails: Sequence[Mail]) -> list[Mail]:
        """Each shard's inbox: the rows of every mail with a destination it owns."""
        like = mails[0].params
        out = []
        for s in range(self.shards):
            keep = self.owner == s
            out.append(Mail.concat([m.restrict(keep) for m in mails if len(m)], like))
        return out

    def _serve(self, tick: int | None) -> list[dict[int, list[int]]]:
        """Per shard: its nodes that other shards' nodes pull from at ``tick``, with the pullers."""
        serve: list[dict[int, list[int]]] = [{} for _ in range(self.shards)]
        if tick is None:
            return serve
        for puller in sorted(self.pull_at.pop(tick, ())):
            for j in self.neighbours[puller]:
                if self.owner[j] != self.owner[puller]:
                    serve[int(self.owner[j])].setdefault(int(j), []).append(puller)
        return serve


def run_in_process(
    shards: Sequence[GossipShard],
    owner: np.ndarray,
    *,
    horizon: int,
    eval_every: int,
    on_eval: Callable[[int, list[ShardReport]], Any],
) -> None:
    """Drive shards in this process through the same supersteps as the engine (a test oracle for it);
    ``on_eval(tick, reports)`` gets every evaluation's reports (with the shards' models)."""
    coord = Coordinator(shards[0].neighbours, owner, len(shards), horizon=horizon, eval_every=eval_every)
    orders: list[WorkOrder] | None = coord.first()
    while orders is not None:
        reports = [execute(shard, o) for shard, o in zip(shards, orders, strict=True)]
        if orders[0].evaluate:
            on_eval(int(orders[0].b_tick), reports)  # type: ignore[arg-type]
        orders = coord.next(reports)


def gather(
    params: Sequence[Mapping[str, torch.Tensor]], owned: Sequence[np.ndarray]
) -> dict[str, torch.Tensor]:
    """Stack shards' models back into global node order."""
    n = sum(len(o) for o in owned)
    out = {k: torch.empty((n, *t.shape[1:]), dtype=t.dtype) for k, t in params[0].items()}
    for p, o in zip(params, owned, strict=True):
        idx = torch.from_numpy(np.asarray(o, dtype=np.int64))
        for k, t in p.items():
            out[k][idx] = t
    return out
