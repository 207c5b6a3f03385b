"""The worker: a Flower ClientApp that trains the logical clients a round's message lists.

In simulation a worker is a SuperNode (a Ray actor) hosting many logical clients; in deployment it hosts
one. Data and model are rebuilt deterministically from the scenario and cached per process, so any actor
can serve any worker's message.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from functools import lru_cache

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsim.data import FederatedData, LazyFederatedData
from fedsim.engine.cohort import select_cohort_trainer
from fedsim.engine.memory import memory_budget_bytes
from fedsim.engine.messages import (
    TrainRequest,
    decode_prepare_request,
    decode_train_request,
    encode_prepare_reply,
    encode_train_reply,
)
from fedsim.engine.placement import add_node_identity
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.faults import nonfinite_clients
from fedsim.protocol import ClientTask, WorkerResult
from fedsim.scenario import Scenario, parse_scenario


def training_device(setting: str) -> torch.device:
    """``engine.device``: ``auto`` = CUDA when this process sees a GPU, else CPU."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@lru_cache(maxsize=4)
def _scenario(scenario_json: str) -> Scenario:
    return parse_scenario(json.loads(scenario_json), source="<message>")


@lru_cache(maxsize=4)
def _environment(scenario_json: str) -> tuple[FederatedData, torch.nn.Module, int]:
    """The run's data (pooled training tensors on the training device; a client-drawn dataset's clients are
    drawn per message, ``cohort_data``), model and memory budget."""
    scenario = _scenario(scenario_json)
    device = training_device(scenario.engine.device)
    data = build_data(scenario)
    if not isinstance(data, LazyFederatedData):
        data = dataclasses.replace(data, train_x=data.train_x.to(device), train_y=data.train_y.to(device))
    budget = memory_budget_bytes(scenario.engine.memory_budget_mb, device, scenario.engine.gpus_per_worker)
    return data, build_initial_model(scenario, data).to(device), budget


def prepare_environment(scenario: dict) -> float:
    """Build (and cache in this process) the scenario's data and model; return the seconds it took."""
    start = time.perf_counter()
    _environment(json.dumps(scenario, sort_keys=True))
    return time.perf_counter() - start


def cohort_data(data: FederatedData | LazyFederatedData, cids: Sequence[int], device: torch.device) -> FederatedData:
    """``data`` itself, or for a client-drawn dataset the examples of ``cids`` only (drawn, or from this process's
    bounded cache of drawn clients), on ``device``."""
    if not isinstance(data, LazyFederatedData):
        return data
    view = data.cohort(cids)
    return dataclasses.replace(view, train_x=view.train_x.to(device), train_y=view.train_y.to(device))


def nonfinite_faults(scenario: Scenario, round: int, cids: Sequence[int]) -> frozenset[int]:
    """The clients of ``cids`` whose update comes back non-finite in ``round`` (``faults.nonfinite``; drawn
    from the scenario seed, the round and the client id, so the same whichever worker trains them)."""
    return nonfinite_clients(scenario.seed, round, cids, scenario.faults.nonfinite)


def with_faults(scenario: Scenario, round: int, tasks: Sequence[ClientTask]) -> tuple[ClientTask, ...]:
    """``tasks``, those drawn by ``faults.nonfinite`` in ``round`` marked ``nonfinite`` (the cohort trainer's
    accumulator then turns their new parameters into NaN)."""
    bad = nonfinite_faults(scenario, round, [t.cid for t in tasks])
    return tuple(dataclasses.replace(t, nonfinite=True) if t.cid in bad else t for t in tasks)


def handle_train(request: TrainRequest) -> WorkerResult:
    """Train the request's clients (no Flower types here); the reply says how long training took."""
    start = time.perf_counter()
    scenario_json = json.dumps(request.scenario, sort_keys=True)
    data, model, budget = _environment(scenario_json)
    data = cohort_data(data, [t.cid for t in request.tasks], next(model.parameters()).device)
    cfg = dataclasses.replace(request.train_config, memory_budget_bytes=budget)
    trainer = select_cohort_trainer(str(request.scenario["engine"]["vectorize"]), model, cfg)
    tasks = with_faults(_scenario(scenario_json), request.round, request.tasks)
    result = trainer(model, request.params, tasks, data, cfg)
    result.train_s = time.perf_counter() - start
    return result


client_app = ClientApp()


@client_app.query("prepare")
def prepare(msg: Message, context: Context) -> Message:
    """Get ready before round 1 (imports, data, model), while the server builds its own side; say which
    partition this node owns, if its node config names one (deployment)."""
    seconds = prepare_environment(decode_prepare_request(msg.content))
    return Message(
        content=add_node_identity(encode_prepare_reply(seconds), context.node_config), reply_to=msg
    )


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Decode the round's work, train the listed clients, reply once with the reduced sum."""
    result = handle_train(decode_train_request(msg.content))
    return Message(content=encode_train_reply(result), reply_to=msg)


@client_app.train("diff2")
def train_diff2(msg: Message, context: Context) -> Message:
    """DIFF2 / DP-GD (``fedsim.engine.diff2_loop``): the listed clients' clipped per-example gradient (difference)
    means at x_{r−1}, summed once (``clients.diff2_client``). x_{r−1} is kept in ``context.state``: the next
    difference round's x_{r−2}. A node without it (restarted) answers with an error; the run stops."""
    from clients.diff2_client import diff2_round
    from fedsim.engine.messages import (
        Diff2Reply,
        decode_diff2_request,
        encode_diff2_reply,
        load_previous_iterate,
        save_previous_iterate,
    )

    start = time.perf_counter()
    req = decode_diff2_request(msg.content)
    x_prev = None
    if req.x_prev is not None:  # a resumed run's first round: the server hands over x_{r−2}
        save_previous_iterate(context.state, round=req.round - 1, x=req.x_prev)
    if req.kind == "difference":
        kept = load_previous_iterate(context.state)
        if kept is None or kept[0] != req.round - 1:
            has = "no previous iterate" if kept is None else f"the iterate of round {kept[0]}"
            reason = (
                f"node {context.node_id} holds {has} but DIFF2's difference round {req.round} needs round "
                f"{req.round - 1}'s (a restarted node loses its context.state)"
            )
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
        x_prev = kept[1]
    scenario_json = json.dumps(req.scenario, sort_keys=True)
    data, model, _ = _environment(scenario_json)
    data = cohort_data(data, req.client_ids, next(model.parameters()).device)
    nonfinite = nonfinite_faults(_scenario(scenario_json), req.round, req.client_ids)
    sums = diff2_round(
        model, data, req.client_ids, x=req.x, x_prev=x_prev, radius=req.radius, nonfinite=nonfinite
    )
    save_previous_iterate(context.state, round=req.round, x=req.x)
    reply = Diff2Reply(
        clipped_sum=sums.clipped_sum,
        grad_sum=sums.grad_sum,
        loss_sum=sums.loss_sum,
        clipped_rows=sums.clipped_rows,
        rows=sums.rows,
        client_ids=sums.client_ids,
        num_examples=sums.num_examples,
        train_s=time.perf_counter() - start,
        failed=sums.failed,
    )
    return Message(content=encode_diff2_reply(reply), reply_to=msg)


@client_app.train("gossip")
def train_gossip(msg: Message, context: Context) -> Message:
    """Gossip learning (``fedsim.engine.gossip_loop``): one superstep of this worker's shard of nodes (phase B of
    the last tick with the other workers' models, phase A of the next). The shard lives in ``context.state``
    between messages; it is built at the first superstep. A node that lost it (restarted) answers with an error."""
    from fedsim.engine.messages import (
        GOSSIP_STATE,
        decode_gossip_order,
        encode_gossip_report,
        encode_gossip_snapshot,
        get_packed,
        gossip_restore_state,
        is_gossip_snapshot_request,
    )
    from fedsim.gossip.supersteps import execute

    start = time.perf_counter()
    if is_gossip_snapshot_request(msg.content):  # a checkpoint: the shard's state, nothing run
        saved = get_packed(context.state, GOSSIP_STATE)
        if saved is None and _withheld(context):
            live = _live_shard(context)
            if live is None:
                return _withheld_miss(context, msg)
            saved = live.state()  # what it saved into the context last
        if saved is None:
            reason = f"node {context.node_id} holds no gossip shard to checkpoint"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
        return Message(content=encode_gossip_snapshot(saved), reply_to=msg)
    scenario_dict, owned, order = decode_gossip_order(msg.content)
    data, model, _ = _environment(json.dumps(scenario_dict, sort_keys=True))
    restored = gossip_restore_state(msg.content)
    if restored is not None:  # a resumed run: the shard as the checkpoint holds it
        shard = _shard_skeleton(json.dumps(scenario_dict, sort_keys=True), tuple(owned))
        shard.load_state(restored)
    else:
        first = order.b_tick == 0 and order.a_tick is None
        shard = _gossip_shard(scenario_dict, owned, data, model, context, first=first)
    if shard is None and _withheld(context):
        return _withheld_miss(context, msg)
    if shard is None:
        reason = (
            f"node {context.node_id} lost its gossip nodes' state (a restarted node loses its context.state)"
        )
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
    _LIVE_SHARDS.pop((context.run_id, context.node_id), None)  # changed now: no longer what the context holds
    report = execute(shard, order)
    _save_gossip_shard(shard, context)
    return Message(content=encode_gossip_report(report, time.perf_counter() - start), reply_to=msg)


GOSSIP_WITHHELD = "withheld"
"""Set in a node's gossip state config (next to its token) when Flower's Ray backend sent the node's context without
the shard's state, to the actor that saved that state and keeps it live (``fedsim.engine.simulation.sticky_actors``).
"""

WITHHELD_MISS = "fedsim: the gossip shard was withheld from a process that does not hold it live"
"""The reason of the error a worker answers with when its shard was withheld but it holds no live shard with the
context's token (its process restarted): Flower's Ray backend then sends the message again with the whole context."""


def _withheld(context: Context) -> bool:
    from fedsim.engine.messages import GOSSIP_STATE_CONFIG

    return bool(context.state.config_records.get(GOSSIP_STATE_CONFIG, {}).get(GOSSIP_WITHHELD, False))


def _withheld_miss(context: Context, msg: Message) -> Message:
    reason = f"{WITHHELD_MISS} (node {context.node_id})"
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


_LIVE_SHARDS: dict[tuple[int, int], tuple[str, object]] = {}
"""(run id, node id) -> (the token of the state this process last saved in that node's ``context.state``, the
shard it saved). The context is the authority; a shard kept here spares loading it again when the node's next
message comes to this same process with that same state (always in process, often on Ray, where any actor may
take any node's message and a restarted one starts empty)."""


def _gossip_shard(scenario_dict, owned, data, model, context: Context, *, first: bool):
    """The worker's shard: new at the run's first superstep, else the one ``context.state`` holds (None if lost):
    kept live by this process when it saved that very state, else loaded from the context."""
    from fedsim.engine.gossip_network import build_shard
    from fedsim.engine.messages import GOSSIP_STATE, get_packed

    scenario_json = json.dumps(scenario_dict, sort_keys=True)
    if first:
        return build_shard(parse_scenario(scenario_dict, source="<message>"), data, model, owned)
    live = _live_shard(context)
    if live is not None:
        return live
    saved = get_packed(context.state, GOSSIP_STATE)
    if saved is None:
        return None
    shard = _shard_skeleton(scenario_json, tuple(owned))
    shard.load_state(saved)  # replaces every piece of state the shard has
    return shard


def _live_shard(context: Context):
    """The shard this process keeps live for the node when it saved the very state the node's context holds, else
    None."""
    from fedsim.engine.messages import GOSSIP_STATE_CONFIG, STATE_TOKEN

    token = context.state.config_records.get(GOSSIP_STATE_CONFIG, {}).get(STATE_TOKEN)
    live = _LIVE_SHARDS.get((context.run_id, context.node_id))
    return live[1] if token is not None and live is not None and live[0] == token else None


@lru_cache(maxsize=8)
def _shard_skeleton(scenario_json: str, owned: tuple[int, ...]):
    """A shard of ``owned`` built once per process (topology, schedule, optimizer, partitions), to load a saved
    state into at every superstep instead of rebuilding it."""
    from fedsim.engine.gossip_network import build_shard

    data, model, _ = _environment(scenario_json)
    scenario = parse_scenario(json.loads(scenario_json), source="<message>")
    return build_shard(scenario, data, model, owned, initial=False)


def _save_gossip_shard(shard, context: Context) -> None:
    from flwr.app import ConfigRecord

    from fedsim.engine.messages import GOSSIP_STATE, GOSSIP_STATE_CONFIG, LAYOUT, STATE_TOKEN, pack_tensors

    context.state[GOSSIP_STATE], context.state[GOSSIP_STATE + LAYOUT] = pack_tensors(shard.state())
    token = uuid.uuid4().hex  # names this saved state (not a simulation draw: results never depend on it)
    context.state[GOSSIP_STATE_CONFIG] = ConfigRecord({STATE_TOKEN: token})
    _LIVE_SHARDS[(context.run_id, context.node_id)] = (token, shard)
