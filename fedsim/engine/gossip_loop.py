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

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp import Grid
from torch import nn

from fedsim.data import FederatedData
from fedsim.engine.gossip_network import build_network, owners_by_shard
from fedsim.engine.messages import MESSAGE_TYPE_GOSSIP, decode_gossip_report, encode_gossip_order
from fedsim.engine.placement import assign, partition_owners
from fedsim.engine.rounds import RunSummary, check_loop_privacy
from fedsim.engine.transport import iter_replies
from fedsim.errors import EngineError
from fedsim.gossip.simulator import evaluate_nodes
from fedsim.gossip.supersteps import Coordinator, ShardReport, gather

if TYPE_CHECKING:
    from fedsim.engine.server import Engine


def run_gossip_loop(
    engine: Engine,
    grid: Grid,
    *,
    nodes: list[int],
    pending_prepare: dict[str, int],
    data: FederatedData,
    model: nn.Module,
) -> RunSummary:
    """Run a gossip scenario to ``gossip.ticks``; one metrics row per evaluation tick.

    Raises:
        ConfigError: a DP scenario (gossip has no DP mechanism here; refused before any superstep).
    """

    sc = engine.scenario
    check_loop_privacy(sc, "gossip")
    g, n = sc.gossip_settings, sc.population.clients
    network = build_network(sc, data, model)
    identities = engine.await_prepared(grid, pending_prepare)
    owners = partition_owners(identities, population=n, mode=engine.placement)
    node_of = {w: c for w, c in assign(range(n), nodes, owners).items() if c}
    workers, owner = owners_by_shard(node_of, n)
    if (owner < 0).any():
        raise EngineError(f"gossip: nodes {np.flatnonzero(owner < 0)[:5].tolist()} have no worker")
    coord = Coordinator(network.neighbours, owner, len(workers), horizon=g.ticks, eval_every=g.eval_every)
    like = {k: v.detach() for k, v in model.named_parameters()}
    summary = RunSummary(rounds=sc.planned_rounds)
    start, losses, crossed, superstep = time.monotonic(), [], 0, 0
    last_params: dict[str, torch.Tensor] | None = None
    orders = coord.first()
    while orders is not None:
        t0 = time.monotonic()
        messages = [
            Message(
                content=encode_gossip_order(
                    scenario=engine.scenario_dict, superstep=superstep, owned=node_of[w], order=o, like=like
                ),
                message_type=MESSAGE_TYPE_GOSSIP,
                dst_node_id=w,
            )
            for w, o in zip(workers, orders, strict=True)
        ]
        node_by_id = dict(zip(grid.push_messages(messages), workers, strict=True))
        got: dict[int, ShardReport] = {}
        train_s = 0.0
        for reply in iter_replies(
            grid, node_by_id, timeout_s=sc.engine.round_timeout_s, max_poll_s=engine.max_poll_s
        ):
            worker = node_by_id[reply.metadata.reply_to_message_id]
            if reply.has_error():
                raise EngineError(
                    f"worker {worker} failed in gossip superstep {superstep}: {reply.error.reason}"
                )
            got[worker], seconds = decode_gossip_report(reply.content)
            train_s = max(train_s, seconds)
        if len(got) < len(workers):
            late = sorted(set(workers) - set(got))
            raise EngineError(
                f"engine.round_timeout_s: workers {late} did not answer gossip superstep {superstep} within "
                f"{sc.engine.round_timeout_s:g} s (their nodes' state is lost)"
            )
        reports = [got[w] for w in workers]
        if orders[0].evaluate:
            tick = int(orders[0].b_tick)  # type: ignore[arg-type]
            last_params = gather([r.params for r in reports], [node_of[w] for w in workers])  # type: ignore[misc]
            row = _row(sc, tick, reports, last_params, model, data, losses, crossed, superstep)
            done = time.monotonic()
            row |= {
                "wall_time_s": round(done - start, 4),
                "time_superstep_s": round(done - t0, 4),
                "time_train_s": round(train_s, 4),
            }
            losses = []
            engine.recorder.write_round(row)
            engine.on_round(row)
            summary.last_row = row
        losses += [x for r in reports for x in r.losses]
        crossed += sum(len(r.mail) for r in reports)
        orders = coord.next(reports)
        superstep += 1
    if last_params is not None:
        average = {k: v.mean(0) for k, v in last_params.items()}
        engine.recorder.save_checkpoint(
            round=sc.planned_rounds, params=average, strategy_state={"node_models": last_params}, final=True
        )
    return summary


def _row(
    sc: Any,
    tick: int,
    reports: list[ShardReport],
    params: dict[str, torch.Tensor],
    model: nn.Module,
    data: FederatedData,
    losses: list[float],
    crossed: int,
    superstep: int,
) -> dict[str, Any]:
    """One evaluation row: counters summed over workers, node and average-model metrics."""
    g = sc.gossip_settings
    counts = {k: sum(r.counts.get(k, 0) for r in reports) for k in sorted(reports[0].counts)}
    metrics = evaluate_nodes(model, params, data.test_x.cpu(), data.test_y.cpu())
    return {
        "round": -(-tick // g.eval_every),  # the evaluation's number (the last one may fall at the horizon)
        "tick": tick,
        "virtual_time_s": round(tick * g.tick_s, 6),
        **counts,
        "train_loss": float(np.mean(losses)) if losses else None,
        **metrics,
        # a decentralised run's accuracy and loss are the means over nodes (report.md, fedsim compare)
        "test_accuracy": metrics["test_accuracy_mean"],
        "test_loss": metrics["test_loss_mean"],
        "online": sum(r.online for r in reports),
        "models_across_workers": crossed,
        "supersteps": superstep,
    }
