"""The engine's discrete-event loop for event-driven strategies (FedFix, async FedAvg, FedBuff, sync FedAvg with a
deadline), on the integer virtual clock of ``strategies.asynchronous``.

Why this module exists: the schedule (who returns when, which server step uses whom, with which weight) is a pure
function of the clients' durations, computed by the strategy; this loop executes it. At every server step it
folds the results that arrived into θ_{n+1} = θ_n + η_g·Σ d_i·Δ_i, then sends the clients the step restarts to
the workers, all from θ_{n+1}, in one message per worker: they are trained together (vectorised) right away,
and their results, summed on the worker per arrival group with their weights d_i, wait on the server until
their step. So no stale model version is ever kept: only the pending results of the clients in flight.

Faults: an unavailable client is not started (it is tried again at the next step); a client that fails, whose
worker is lost or whose update is not finite is dropped at the step it would have joined; synchronous stragglers
are cancelled at the deadline. Every step's row records the virtual time, staleness and the dropped clients.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.serverapp import Grid
from torch import nn

from fedsim.data import FederatedData
from fedsim.engine.rounds import RunSummary, check_loop_privacy, client_seed, evaluate
from fedsim.engine.transport import UNAVAILABLE_CODES
from fedsim.protocol import ClientTask
from fedsim.randomness import Stream, generator
from fedsim.scenario.devices import DeviceProfiles
from strategies.asynchronous import TICKS_PER_SECOND, EventStrategy, Step, to_ticks

if TYPE_CHECKING:
    from flwr.app import Message

    from fedsim.engine.server import Engine


class PendingResults:
    """Results of clients in flight: weighted sums per arrival group, and per client its loss and size."""

    def __init__(self) -> None:
        self.sums: dict[int, dict[str, torch.Tensor]] = {}
        self.key_of: dict[tuple[int, int], int] = {}
        self.facts: dict[tuple[int, int], tuple[int, float]] = {}
        self.lost: dict[tuple[int, int], str] = {}

    def take(self, arrivals: Sequence[Any]) -> tuple[dict[str, torch.Tensor] | None, list[Any], dict[str, int]]:
        """The summed results of ``arrivals`` (None if none came), the arrivals that count, and why the rest
        were dropped (counts by reason)."""
        total: dict[str, torch.Tensor] | None = None
        kept, why = [], {"timeout": 0, "nonfinite": 0}
        for key in sorted({self.key_of[(a.cid, a.start)] for a in arrivals}):
            sums = self.sums.pop(key, None)
            if sums is None:
                continue
            total = sums if total is None else {k: total[k] + v for k, v in sums.items()}
        for a in arrivals:
            run = (a.cid, a.start)
            self.key_of.pop(run)
            reason = self.lost.pop(run, None)
            if reason is None and run in self.facts:
                kept.append(a)
            else:
                why[reason or "timeout"] += 1
        return total, kept, why

    def discard(self, runs: Sequence[Any]) -> None:
        """Forget runs whose result is not used (failed, cancelled stragglers); a group sum goes with its last
        member."""
        for d in runs:
            run = (d.cid, d.start)
            key = self.key_of.pop(run, None)
            if key is not None and key not in self.key_of.values():
                self.sums.pop(key, None)
            self.facts.pop(run, None)
            self.lost.pop(run, None)


def _durations(engine: Engine, data: FederatedData, profiles: DeviceProfiles, model_bytes: int) -> list[int]:
    sc = engine.scenario
    return [
        to_ticks(
            profiles.duration(
                c, examples=data.num_examples(c), epochs=sc.client.epochs, model_bytes=model_bytes
            )
        )
        for c in range(sc.population.clients)
    ]


def run_event_loop(
    engine: Engine,
    grid: Grid,
    *,
    nodes: Sequence[int],
    pending_prepare: dict[str, int],
    data: FederatedData,
    model: nn.Module,
    params: dict[str, torch.Tensor],
    strategy: EventStrategy,
) -> RunSummary:
    """Run ``scenario.rounds`` server steps of ``strategy`` on the workers of ``grid``.

    Raises:
        ConfigError: a DP scenario (this loop adds no noise; refused before any step).
    """
    from fedsim.engine.placement import partition_owners

    sc = engine.scenario
    check_loop_privacy(sc, "event")
    m = sc.population.clients
    model_bytes = sum(v.numel() * v.element_size() for v in params.values())
    profiles = DeviceProfiles.sample(sc.population.devices, m, generator(sc.seed, Stream.DEVICE))
    identities = engine.await_prepared(grid, pending_prepare)
    owners = partition_owners(identities, population=m, mode=engine.placement)
    if owners is not None and strategy.rule.on_arrival:  # real devices: steps follow the real arrivals
        return run_arrival_loop(
            engine, grid, data=data, model=model, params=params, strategy=strategy, owners=owners
        )
    examples = [data.num_examples(c) for c in range(m)]
    connected: set[int] | None = None

    def online(cid: int, tick: int) -> bool:
        rng = generator(sc.seed, Stream.EVENT_ONLINE, cid, tick)
        up = bool(profiles.online(np.asarray([cid]), tick / TICKS_PER_SECOND, rng)[0])
        if owners is not None and connected is not None:
            up = up and owners.get(cid) in connected
        return up and examples[cid] > 0

    def fails(cid: int, tick: int) -> bool:
        return bool(generator(sc.seed, Stream.EVENT_FAILURE, cid, tick).random() < profiles.failure)

    def pick(candidates: Sequence[int], k: int, version: int) -> list[int]:
        if len(candidates) <= k:
            return sorted(candidates)
        rng = generator(sc.seed, Stream.EVENT_PICK, version)
        return sorted(int(c) for c in rng.choice(np.asarray(candidates), size=k, replace=False))

    schedule = strategy.schedule(
        examples=examples,
        durations=_durations(engine, data, profiles, model_bytes),
        online=online,
        fails=fails,
        max_steps=sc.rounds,
        pick=pick,
    )
    sync = strategy.rule.name == "fedavg_sync"
    state = strategy.init(params)
    pending = PendingResults()
    serial = itertools.count()
    summary = RunSummary(rounds=sc.rounds)
    start_wall, prev_tick = time.monotonic(), 0
    for step in schedule.steps():
        t0 = time.monotonic()
        if owners is not None:
            connected = {int(n) for n in grid.get_node_ids()}
        row: dict[str, Any] | None = None
        if step.index >= 0:
            pending.discard([*step.failed, *step.cancelled])
            total, kept, why = pending.take(step.arrivals)
            weights_sum = sum(schedule.p[a.cid] for a in kept) if sync else 1.0
            if total is not None and kept and weights_sum > 0:
                agg = strategy.apply(state, params, {k: v / weights_sum for k, v in total.items()})
                params, state = agg.params, agg.state
                metrics = dict(agg.metrics)
            else:
                metrics = {"aggregated": 0.0}
            staleness = [step.index - a.version for a in kept]
            facts = [pending.facts.pop((a.cid, a.start)) for a in kept]
            row = {
                "round": step.index + 1,
                "virtual_time_s": step.tick / TICKS_PER_SECOND,
                "round_virtual_s": (step.tick - prev_tick) / TICKS_PER_SECOND,
                "clients": len(kept),
                "dropped": len(step.dropped) + why["timeout"] + why["nonfinite"],
                "dropped_failure": len(step.failed),
                "dropped_cancelled": len(step.cancelled),
                "dropped_timeout": why["timeout"],
                "dropped_nonfinite": why["nonfinite"],
                "staleness_mean": float(np.mean(staleness)) if staleness else None,
                "staleness_max": max(staleness) if staleness else None,
                "staleness": staleness,
                "train_loss": (sum(n * loss for n, loss in facts) / sum(n for n, _ in facts)) if facts else None,
                **{k: float(v) for k, v in metrics.items()},
            }
            prev_tick = step.tick
        train_s = _dispatch(engine, grid, nodes, step, params, schedule, strategy, pending, serial, owners)
        if row is None:
            continue
        last = step.index + 1 == sc.rounds or (strategy.horizon is not None and step.tick >= strategy.horizon)
        if (step.index + 1) % sc.evaluation.every == 0 or last:
            model.load_state_dict(params)
            row["test_loss"], row["test_accuracy"] = evaluate(model, data.test_x, data.test_y)
        done = time.monotonic()
        row |= {
            "selected": len(step.dispatched),
            "wall_time_s": round(done - start_wall, 4),
            "round_wall_s": round(done - t0, 4),
            "time_train_s": round(train_s, 4),
        }
        engine.recorder.write_round(row)
        engine.on_round(row)
        summary.last_row = row
        summary.rounds = step.index + 1
    engine.recorder.save_checkpoint(
        round=int(summary.last_row.get("round", 0)), params=params, strategy_state=state, final=True
    )
    return summary


def _dispatch(
    engine: Engine,
    grid: Grid,
    nodes: Sequence[int],
    step: Step,
    params: Mapping[str, torch.Tensor],
    schedule: Any,
    strategy: EventStrategy,
    pending: PendingResults,
    serial: Any,
    owners: Mapping[int, int] | None,
) -> float:
    """Train the runs ``step`` starts from ``params``; hold their results until their step. Returns seconds."""

    sc = engine.scenario
    window = strategy.rule.window if strategy.rule.name == "fedfix" else 0
    tasks = []
    for d in step.dispatched:
        run = (d.cid, d.start)
        # FedFix sums a whole arrival window on the worker; the other rules keep each run apart
        key = -(-d.arrive // window) - 1 if window else next(serial)
        pending.key_of[run] = key
        if d.failed:
            continue
        tasks.append(
            ClientTask(cid=d.cid, seed=client_seed(sc.seed, d.version, d.cid), weight=schedule.d[d.cid], group=key)
        )
    if not tasks:
        return 0.0
    t0 = time.monotonic()
    replies = engine.train_round(
        grid, nodes, step.index + 1, params, [t.cid for t in tasks], {}, owners=owners, tasks=tasks
    )
    start_of = {d.cid: d.start for d in step.dispatched}
    for r in replies.results:
        for g, sums in r.group_sums.items():
            held = pending.sums.get(g)
            pending.sums[g] = dict(sums) if held is None else {k: held[k] + v for k, v in sums.items()}
        for cid, n, loss in zip(r.client_ids, r.num_examples, r.train_loss, strict=True):
            pending.facts[(cid, start_of[cid])] = (n, loss)
        for cid in r.failed:
            pending.lost[(cid, start_of[cid])] = "nonfinite"
    for cid in [*replies.lost_timeout, *replies.lost_unavailable]:
        pending.lost[(cid, start_of[cid])] = "timeout"
    return time.monotonic() - t0


def run_arrival_loop(
    engine: Engine,
    grid: Grid,
    *,
    data: FederatedData,
    model: nn.Module,
    params: dict[str, torch.Tensor],
    strategy: EventStrategy,
    owners: Mapping[int, int],
) -> RunSummary:
    """Async FedAvg and FedBuff on real devices (deployment): steps follow the order replies really arrive in.

    Every connected device starts from θ_0; each reply goes into the buffer as it comes (``Grid.pull_messages``
    through ``iter_replies``); when c results are in (c = 1 for async FedAvg) the server steps, and those clients
    restart from the new model. A device that goes away is dropped; when nothing arrives within
    ``engine.round_timeout_s`` the server steps with what it has, so no step waits forever. ``virtual_time_s``
    is wall-clock time here.
    """
    from flwr.app import Message

    from fedsim.engine.messages import MESSAGE_TYPE_TRAIN, decode_train_reply, encode_train_request

    sc = engine.scenario
    m = sc.population.clients
    examples = [data.num_examples(c) for c in range(m)]
    p = strategy.p(examples)
    if strategy.rule.name == "fedbuff":
        d = [1.0 / strategy.rule.buffer] * m
    elif strategy.rule.variant == "identical":
        d = [1.0] * m
    else:  # d_i = p_i·τ_i·Σ_j 1/τ_j needs durations: real devices have none in advance, so d_i = p_i·M
        d = [pi * m for pi in p]
    state = strategy.init(params)
    arrivals = Arrivals(grid, max_poll_s=engine.max_poll_s)
    idle: set[int] = set()  # clients whose device was not connected when they were due: tried at every step

    def dispatch(cids: Sequence[int], version: int) -> None:
        connected = {int(n) for n in grid.get_node_ids()}
        messages = []
        for cid in sorted({*cids, *idle}):
            node = owners.get(cid)
            if examples[cid] == 0 or node is None:
                continue
            if node not in connected:
                idle.add(cid)
                continue
            idle.discard(cid)
            task = ClientTask(cid=cid, seed=client_seed(sc.seed, version, cid), weight=d[cid], group=0)
            content = encode_train_request(
                scenario=engine.scenario_dict, round=version, params=params, tasks=[task], round_config={}
            )
            messages.append((cid, Message(content=content, message_type=MESSAGE_TYPE_TRAIN, dst_node_id=node)))
        ids = grid.push_messages([msg for _, msg in messages])
        for (cid, _), msg_id in zip(messages, ids, strict=True):
            arrivals.expect(msg_id, cid, version)

    dispatch(range(m), 0)
    summary = RunSummary(rounds=0)
    start, c = time.monotonic(), strategy.rule.buffer
    for n in range(sc.rounds):
        t0 = time.monotonic()
        deadline = t0 + sc.engine.round_timeout_s
        buffer: list[tuple[int, int, Any]] = []
        dropped: list[int] = []
        while len(buffer) < c and (arrived := arrivals.next(deadline)) is not None:
            reply, cid, version = arrived
            if reply.has_error() and reply.error.code in UNAVAILABLE_CODES:
                dropped.append(cid)
                continue
            if reply.has_error():
                from fedsim.errors import EngineError

                raise EngineError(f"client {cid} failed at step {n + 1}: {reply.error.reason}")
            result = decode_train_reply(reply.content)
            if result.failed:
                dropped.append(cid)
            else:
                buffer.append((cid, version, result))
        if buffer:
            total = {k: sum(r.group_sums[0][k] for _, _, r in buffer) for k in buffer[0][2].group_sums[0]}
            agg = strategy.apply(state, params, total)
            params, state, metrics = agg.params, agg.state, dict(agg.metrics)
        else:
            metrics = {"aggregated": 0.0}
        staleness = [n - v for _, v, _ in buffer]
        dispatch([cid for cid, _, _ in buffer] + dropped, n + 1)
        row: dict[str, Any] = {
            "round": n + 1,
            "virtual_time_s": round(time.monotonic() - start, 4),
            "clients": len(buffer),
            "dropped": len(dropped),
            "dropped_unavailable": len(dropped),
            "staleness_mean": float(np.mean(staleness)) if staleness else None,
            "staleness_max": max(staleness) if staleness else None,
            "staleness": staleness,
            **{k: float(v) for k, v in metrics.items()},
        }
        if (n + 1) % sc.evaluation.every == 0 or n + 1 == sc.rounds:
            model.load_state_dict(params)
            row["test_loss"], row["test_accuracy"] = evaluate(model, data.test_x, data.test_y)
        done = time.monotonic()
        row |= {"wall_time_s": round(done - start, 4), "round_wall_s": round(done - t0, 4)}
        engine.recorder.write_round(row)
        engine.on_round(row)
        summary.last_row, summary.rounds = row, n + 1
    engine.recorder.save_checkpoint(round=summary.rounds, params=params, strategy_state=state, final=True)
    return summary


class Arrivals:
    """The replies to the messages in flight, handed out one at a time in the order they came.

    A pull hands each reply over once, and one pull can bring several; those the current step does not take
    wait here for the next one (dropping them would lose the client: nothing would ever answer for it again).
    """

    def __init__(self, grid: Grid, *, poll_s: float = 0.005, max_poll_s: float | None = None) -> None:
        self.grid, self.poll_s, self.max_poll_s = grid, poll_s, max_poll_s or poll_s
        self.in_flight: dict[str, tuple[int, int]] = {}  # message id -> (client, model version it started from)
        self.backlog: deque[Message] = deque()

    def expect(self, message_id: str, cid: int, version: int) -> None:
        self.in_flight[message_id] = (cid, version)

    def next(self, deadline: float) -> tuple[Message, int, int] | None:
        """The next reply with its (client, version); None when nothing is in flight or ``deadline`` passed."""
        pause = self.poll_s
        while not self.backlog:
            if not self.in_flight or time.monotonic() >= deadline:
                return None
            got = [r for r in self.grid.pull_messages(sorted(self.in_flight))
                   if r.metadata.reply_to_message_id in self.in_flight]  # fmt: skip
            self.backlog.extend(got)
            if not got:
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(pause * 2, self.max_poll_s)
        reply = self.backlog.popleft()
        cid, version = self.in_flight.pop(reply.metadata.reply_to_message_id)
        return reply, cid, version
