"""The engine's loop for decentralised gossip learning: node models on the workers that own them, supersteps
between.

Why this module exists: gossip has no server model, so the engine only routes. Each logical client is a gossip
node owned by one worker (the engine's stable sharding rule; with a deployment ``placement``, the device that owns
it, untested). Every superstep sends each worker ONE message (``train.gossip``): the models other workers' nodes
sent to its nodes at the last tick, and which tick to run next (``fedsim.gossip.supersteps``); the worker runs its
shard of nodes, stacked and trained together, keeps it in its ``context.state`` and answers with the models its
nodes send to other workers' nodes. So models cross workers once per tick in one message per worker, not one
Flower message per model. At evaluation ticks the workers also return their node models; the server evaluates
them (node accuracy mean and spread, the average model, consensus distance, per-layer variance) and writes one
metrics row.

A worker that fails or does not answer stops the run with a one-line error (its nodes' state is lost); node
faults are the scenario's availability and failure rates, which the protocol handles (offline nodes neither send
nor receive; merges time out).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Message

from fedsim.engine.gossip_network import build_network, owners_by_shard
from fedsim.engine.loop import RunContext, StepResult
from fedsim.engine.messages import (
    MESSAGE_TYPE_GOSSIP,
    decode_gossip_report,
    decode_gossip_snapshot,
    encode_gossip_order,
    encode_gossip_snapshot_request,
)
from fedsim.engine.placement import assign
from fedsim.engine.transport import error_reason, iter_replies
from fedsim.errors import EngineError
from fedsim.gossip.simulator import evaluate_nodes
from fedsim.gossip.supersteps import Coordinator, ShardReport, WorkOrder, gather


class GossipLoop:
    """A gossip scenario to ``gossip.ticks``: one step per evaluation tick (the supersteps between run in it).

    Its state between steps: the coordinator's (the next tick, the pulls due), the next superstep's orders with
    the mail between workers, the counters of the rows, the last evaluated node models, and every worker's shard
    (fetched for a checkpoint with one snapshot message per worker, and handed back with a restored run's first
    orders).
    """

    family: ClassVar[str] = "gossip"
    privacy_levels: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, run: RunContext, strategy: Any) -> None:
        sc = run.scenario
        self.run = run
        g, n = sc.gossip_settings, sc.population.clients
        network = build_network(sc, run.data, run.model)
        self.node_of = {w: c for w, c in assign(range(n), run.nodes, run.owners).items() if c}
        self.workers, owner = owners_by_shard(self.node_of, n)
        if (owner < 0).any():
            raise EngineError(f"gossip: nodes {np.flatnonzero(owner < 0)[:5].tolist()} have no worker")
        self.coord = Coordinator(
            network.neighbours, owner, len(self.workers), horizon=g.ticks, eval_every=g.eval_every
        )
        self.like = {k: v.detach() for k, v in run.model.named_parameters()}
        self.losses: list[float] = []
        self.crossed = 0
        self.superstep = 0
        self.last_params: dict[str, torch.Tensor] | None = None
        self.orders: list[WorkOrder] | None = self.coord.first()
        self.restore_shards: dict[int, dict[str, torch.Tensor]] | None = None
        self.evaluated: tuple[list[ShardReport], int] | None = None

    def superstep_once(self, orders: list[WorkOrder]) -> tuple[list[ShardReport], float]:
        """Send one superstep's orders (with the shards to restore, after a resume) and take every report."""
        run = self.run
        restore = self.restore_shards or {}
        messages = [
            Message(
                content=encode_gossip_order(
                    scenario=run.engine.scenario_dict, superstep=self.superstep, owned=self.node_of[w], order=o,
                    like=self.like, restore=restore.get(w),
                ),
                message_type=MESSAGE_TYPE_GOSSIP,
                dst_node_id=w,
            )
            for w, o in zip(self.workers, orders, strict=True)
        ]  # fmt: skip
        got = self.collect(messages, what=f"gossip superstep {self.superstep}")
        self.restore_shards = None
        train_s = 0.0
        reports = []
        for w in self.workers:
            report, seconds = decode_gossip_report(got[w].content)
            reports.append(report)
            train_s = max(train_s, seconds)
        return reports, train_s

    def collect(self, messages: list[Message], *, what: str) -> dict[int, Message]:
        """Push one message per worker and take every reply (a failed or late worker stops the run)."""
        sc, run = self.run.scenario, self.run
        node_by_id = dict(zip(run.grid.push_messages(messages), self.workers, strict=True))
        got: dict[int, Message] = {}
        timeout = sc.engine.round_timeout_s
        for reply in iter_replies(run.grid, node_by_id, timeout_s=timeout, max_poll_s=run.engine.max_poll_s):
            worker = node_by_id[reply.metadata.reply_to_message_id]
            if reply.has_error():
                raise EngineError(f"worker {worker} failed in {what}: {error_reason(reply)}")
            got[worker] = reply
        if len(got) < len(self.workers):
            late = sorted(set(self.workers) - set(got))
            raise EngineError(
                f"engine.round_timeout_s: workers {late} did not answer {what} within {timeout:g} s "
                "(their nodes' state is lost)"
            )
        return got

    def step(self) -> StepResult | None:
        """Supersteps up to and including the next evaluation tick's."""
        sc = self.run.scenario
        train_s = 0.0
        while self.orders is not None:
            orders = self.orders
            reports, seconds = self.superstep_once(orders)
            train_s += seconds
            row: dict[str, Any] | None = None
            if orders[0].evaluate:
                tick = int(orders[0].b_tick)  # type: ignore[arg-type]
                self.last_params = gather(
                    [r.params for r in reports], [self.node_of[w] for w in self.workers]
                )  # type: ignore[misc]
                row = counters_row(sc, tick, reports, self.losses, self.crossed, self.superstep)
                self.losses = []
            self.losses += [x for r in reports for x in r.losses]
            self.crossed += sum(len(r.mail) for r in reports)
            self.orders = self.coord.next(reports)
            self.superstep += 1
            if row is not None:
                t_replies = time.monotonic()
                last = self.orders is None
                return StepResult(
                    row=row, index=int(row["round"]), last=last, evaluate=True, train_s=train_s,
                    t_replies=t_replies, t_aggregated=t_replies,
                )  # fmt: skip
        return None

    def evaluate(self) -> dict[str, Any]:
        assert self.last_params is not None
        data = self.run.data
        metrics = evaluate_nodes(self.run.model, self.last_params, data.test_x.cpu(), data.test_y.cpu())
        # a decentralised run's accuracy and loss are the means over nodes (report.md, fedsim compare)
        return {
            **metrics,
            "test_accuracy": metrics["test_accuracy_mean"],
            "test_loss": metrics["test_loss_mean"],
        }

    def result(self) -> tuple[dict[str, torch.Tensor], Any]:
        """The average of the last evaluated node models, and every node model."""
        params = self.last_params or {}
        return {k: v.mean(0) for k, v in params.items()}, {"node_models": params}

    def checkpoint_state(self) -> dict[str, Any]:
        """The coordinator, the next orders and every worker's shard (one snapshot message per worker)."""
        run = self.run
        messages = [
            Message(
                content=encode_gossip_snapshot_request(
                    scenario=run.engine.scenario_dict, owned=self.node_of[w]
                ),
                message_type=MESSAGE_TYPE_GOSSIP,
                dst_node_id=w,
            )
            for w in self.workers
        ]
        got = self.collect(messages, what="a gossip checkpoint")
        return {
            "coordinator": {"a_tick": self.coord.a_tick, "pull_at": copy.deepcopy(self.coord.pull_at),
                            "done": self.coord.done},
            "orders": copy.deepcopy(self.orders),
            "losses": list(self.losses),
            "crossed": self.crossed,
            "superstep": self.superstep,
            "shards": {i: decode_gossip_snapshot(got[w].content) for i, w in enumerate(self.workers)},
        }  # fmt: skip

    def restore(
        self, state: Mapping[str, Any], strategy_state: Any, params: Mapping[str, torch.Tensor]
    ) -> None:
        c = state["coordinator"]
        self.coord.a_tick, self.coord.pull_at, self.coord.done = (
            c["a_tick"],
            copy.deepcopy(c["pull_at"]),
            c["done"],
        )
        self.orders = copy.deepcopy(state["orders"])
        self.losses, self.crossed, self.superstep = (
            list(state["losses"]),
            int(state["crossed"]),
            int(state["superstep"]),
        )
        self.last_params = dict(strategy_state["node_models"]) or None
        shards = state["shards"]
        if len(shards) != len(self.workers):
            raise EngineError(
                f"the checkpoint holds {len(shards)} gossip shards but {len(self.workers)} workers run now: "
                "resume with the same engine.workers"
            )
        self.restore_shards = {w: shards[i] for i, w in enumerate(self.workers)}


def counters_row(
    sc: Any, tick: int, reports: list[ShardReport], losses: list[float], crossed: int, superstep: int
) -> dict[str, Any]:
    """One evaluation tick's row without the evaluation: counters summed over workers, the training loss."""
    g = sc.gossip_settings
    counts = {k: sum(r.counts.get(k, 0) for r in reports) for k in sorted(reports[0].counts)}
    return {
        "round": -(-tick // g.eval_every),  # the evaluation's number (the last one may fall at the horizon)
        "tick": tick,
        "virtual_time_s": round(tick * g.tick_s, 6),
        **counts,
        "train_loss": float(np.mean(losses)) if losses else None,
        "online": sum(r.online for r in reports),
        "models_across_workers": crossed,
        "supersteps": superstep,
    }
