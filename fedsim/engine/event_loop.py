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

import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from flwr.serverapp import Grid

from fedsim.engine.loop import RunContext, StepResult
from fedsim.engine.rounds import client_seed, evaluate
from fedsim.engine.transport import UNAVAILABLE_CODES, RoundReplies, error_reason
from fedsim.errors import EngineError
from fedsim.protocol import ClientTask
from fedsim.randomness import Stream, generator
from strategies.asynchronous import TICKS_PER_SECOND, EventStrategy, Step, to_ticks

if TYPE_CHECKING:
    from flwr.app import Message


class PendingResults:
    """Results of clients in flight: weighted sums per arrival group, and per client its loss and size."""

    def __init__(self) -> None:
        self.sums: dict[int, dict[str, torch.Tensor]] = {}
        self.key_of: dict[tuple[int, int], int] = {}
        self.facts: dict[tuple[int, int], tuple[int, float]] = {}
        self.lost: dict[tuple[int, int], str] = {}

    def take(
        self, arrivals: Sequence[Any]
    ) -> tuple[dict[str, torch.Tensor] | None, list[Any], dict[str, int]]:
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

    def absorb(self, replies: RoundReplies, start_of: Mapping[int, int]) -> None:
        """Hold the group sums and per-client facts of the replies to one dispatch (``start_of``: each client's
        start tick); clients whose update was not finite or whose worker was lost are marked for their step."""
        for r in replies.results:
            for g, sums in r.group_sums.items():
                held = self.sums.get(g)
                self.sums[g] = dict(sums) if held is None else {k: held[k] + v for k, v in sums.items()}
            for cid, n, loss in zip(r.client_ids, r.num_examples, r.train_loss, strict=True):
                self.facts[(cid, start_of[cid])] = (n, loss)
            for cid in r.failed:
                self.lost[(cid, start_of[cid])] = "nonfinite"
        for cid in [*replies.lost_timeout, *replies.lost_unavailable]:
            self.lost[(cid, start_of[cid])] = "timeout"

    def state(self) -> dict[str, Any]:
        """The results in flight, for a checkpoint (keys as lists: a checkpoint holds no tuples as keys)."""
        return {
            "sums": dict(self.sums),
            "key_of": [[c, t, k] for (c, t), k in self.key_of.items()],
            "facts": [[c, t, n, loss] for (c, t), (n, loss) in self.facts.items()],
            "lost": [[c, t, why] for (c, t), why in self.lost.items()],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PendingResults:
        out = cls()
        out.sums = {int(g): dict(v) for g, v in state["sums"].items()}
        out.key_of = {(int(c), int(t)): int(k) for c, t, k in state["key_of"]}
        out.facts = {(int(c), int(t)): (int(n), float(loss)) for c, t, n, loss in state["facts"]}
        out.lost = {(int(c), int(t)): str(why) for c, t, why in state["lost"]}
        return out


def make_event_loop(run: RunContext, strategy: EventStrategy) -> EventLoop | ArrivalLoop:
    """The event family's loop: the virtual clock in simulation; on real devices, async FedAvg and FedBuff step
    as the replies really arrive (:class:`ArrivalLoop`)."""
    if run.owners is not None and strategy.rule.on_arrival:
        return ArrivalLoop(run, strategy)
    return EventLoop(run, strategy)


make_event_loop.privacy_levels = frozenset()  # type: ignore[attr-defined]


class EventLoop:
    """``scenario.rounds`` server steps of an event-driven strategy on the integer virtual clock.

    Its state between steps: the model, the strategy state, the results of the clients in flight
    (:class:`PendingResults`), the arrival-group counter and the tick of the last step. The schedule itself is
    a pure function of the scenario (durations, availability and failure draws keyed by client and tick), so a
    restored loop replays it to the step it stopped at, without training.
    """

    family: ClassVar[str] = "event"
    privacy_levels: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, run: RunContext, strategy: EventStrategy) -> None:
        sc = run.scenario
        self.run, self.strategy = run, strategy
        m = sc.population.clients
        profiles, owners = run.profiles, run.owners
        examples = [run.data.num_examples(c) for c in range(m)]
        self.connected: set[int] | None = None

        def online(cid: int, tick: int) -> bool:
            rng = generator(sc.seed, Stream.EVENT_ONLINE, cid, tick)
            up = bool(profiles.online(np.asarray([cid]), tick / TICKS_PER_SECOND, rng)[0])
            if owners is not None and self.connected is not None:
                up = up and owners.get(cid) in self.connected
            return up and examples[cid] > 0

        def fails(cid: int, tick: int) -> bool:
            return bool(generator(sc.seed, Stream.EVENT_FAILURE, cid, tick).random() < profiles.failure)

        def pick(candidates: Sequence[int], k: int, version: int) -> list[int]:
            if len(candidates) <= k:
                return sorted(candidates)
            rng = generator(sc.seed, Stream.EVENT_PICK, version)
            return sorted(int(c) for c in rng.choice(np.asarray(candidates), size=k, replace=False))

        durations = [
            to_ticks(
                profiles.duration(
                    c, examples=examples[c], epochs=sc.client.epochs, model_bytes=run.model_bytes
                )
            )
            for c in range(m)
        ]
        self.schedule = strategy.schedule(
            examples=examples, durations=durations, online=online, fails=fails, max_steps=sc.rounds, pick=pick
        )
        self.steps = self.schedule.steps()
        self.taken = 0  # schedule steps consumed (the first, index −1, only dispatches)
        self.params = run.params
        self.strategy_state = strategy.init(self.params)
        self.pending = PendingResults()
        self.serial = 0
        self.prev_tick = 0

    def step(self) -> StepResult | None:
        sc, run = self.run.scenario, self.run
        sync = self.strategy.rule.name == "fedavg_sync"
        for step in self.steps:
            self.taken += 1
            if run.owners is not None:
                self.connected = {int(n) for n in run.grid.get_node_ids()}
            if step.index < 0:  # the first dispatch: no server step yet
                self.dispatch(step)
                continue
            pending = self.pending
            pending.discard([*step.failed, *step.cancelled])
            total, kept, why = pending.take(step.arrivals)
            weights_sum = sum(self.schedule.p[a.cid] for a in kept) if sync else 1.0
            t_replies = time.monotonic()
            if total is not None and kept and weights_sum > 0:
                agg = self.strategy.apply(
                    self.strategy_state, self.params, {k: v / weights_sum for k, v in total.items()}
                )
                self.params, self.strategy_state = agg.params, agg.state
                metrics = dict(agg.metrics)
            else:
                metrics = {"aggregated": 0.0}
            t_aggregated = time.monotonic()
            staleness = [step.index - a.version for a in kept]
            facts = [pending.facts.pop((a.cid, a.start)) for a in kept]
            row: dict[str, Any] = {
                "virtual_time_s": step.tick / TICKS_PER_SECOND,
                "round_virtual_s": (step.tick - self.prev_tick) / TICKS_PER_SECOND,
                "selected": len(step.dispatched),
                "clients": len(kept),
                "dropped": len(step.dropped) + why["timeout"] + why["nonfinite"],
                "dropped_failure": len(step.failed),
                "dropped_cancelled": len(step.cancelled),
                "dropped_timeout": why["timeout"],
                "dropped_nonfinite": why["nonfinite"],
                "staleness_mean": float(np.mean(staleness)) if staleness else None,
                "staleness_max": max(staleness) if staleness else None,
                "staleness": staleness,
                "train_loss": (sum(n * loss for n, loss in facts) / sum(n for n, _ in facts))
                if facts
                else None,
                **{k: float(v) for k, v in metrics.items()},
            }
            self.prev_tick = step.tick
            train_s = self.dispatch(step)  # the restarted clients train now, from the new model
            index = step.index + 1
            horizon = self.strategy.horizon
            last = index == sc.rounds or (horizon is not None and step.tick >= horizon)
            return StepResult(
                row=row, index=index, last=last, evaluate=run.evaluation_due(index, last=last), train_s=train_s,
                t_replies=t_replies, t_aggregated=t_aggregated,
            )  # fmt: skip
        return None

    def dispatch(self, step: Step) -> float:
        """Train the runs ``step`` starts from the current model; hold their results until their step."""
        run = self.run
        window = self.strategy.rule.window if self.strategy.rule.name == "fedfix" else 0
        tasks = []
        for d in step.dispatched:
            # FedFix sums a whole arrival window on the worker; the other rules keep each run apart
            if window:
                key = -(-d.arrive // window) - 1
            else:
                key, self.serial = self.serial, self.serial + 1
            self.pending.key_of[(d.cid, d.start)] = key
            if d.failed:
                continue
            seed = client_seed(run.scenario.seed, d.version, d.cid)
            tasks.append(ClientTask(cid=d.cid, seed=seed, weight=self.schedule.d[d.cid], group=key))
        if not tasks:
            return 0.0
        t0 = time.monotonic()
        replies = run.engine.train_round(
            run.grid, run.nodes, step.index + 1, self.params, [t.cid for t in tasks], {}, owners=run.owners,
            tasks=tasks,
        )  # fmt: skip
        self.pending.absorb(replies, {d.cid: d.start for d in step.dispatched})
        return time.monotonic() - t0

    def evaluate(self) -> dict[str, Any]:
        return evaluate_params(self.run, self.params)

    def result(self) -> tuple[dict[str, torch.Tensor], Any]:
        return self.params, self.strategy_state

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "taken": self.taken, "serial": self.serial, "prev_tick": self.prev_tick,
            "pending": self.pending.state(),
        }  # fmt: skip

    def restore(
        self, state: Mapping[str, Any], strategy_state: Any, params: Mapping[str, torch.Tensor]
    ) -> None:
        """Replay the schedule to the step the checkpoint was taken after (no training), then take its state."""
        for _ in range(int(state["taken"])):
            next(self.steps)
        self.taken, self.serial, self.prev_tick = (
            int(state["taken"]),
            int(state["serial"]),
            int(state["prev_tick"]),
        )
        self.pending = PendingResults.from_state(state["pending"])
        self.params, self.strategy_state = dict(params), strategy_state


def evaluate_params(run: RunContext, params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Test loss and accuracy of ``params`` on the run's central test set."""
    run.model.load_state_dict(params)
    loss, accuracy = evaluate(run.model, run.data.test_x, run.data.test_y)
    return {"test_loss": loss, "test_accuracy": accuracy}


class ArrivalLoop:
    """Async FedAvg and FedBuff on real devices (deployment): steps follow the order replies really arrive in.

    Every connected device starts from θ_0; each reply goes into the buffer as it comes (``Grid.pull_messages``
    through :class:`Arrivals`); when c results are in (c = 1 for async FedAvg) the server steps, and those
    clients restart from the new model. A device that goes away is dropped; a non-finite update is dropped and
    counted; when nothing arrives within ``engine.round_timeout_s`` the server steps with what it has, so no
    step waits forever. ``virtual_time_s`` is wall-clock time here, so such a run cannot be resumed to the same
    result: its checkpoints hold the model, and resuming is refused.
    """

    family: ClassVar[str] = "event"
    privacy_levels: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, run: RunContext, strategy: EventStrategy) -> None:
        m = run.scenario.population.clients
        self.run, self.strategy = run, strategy
        self.examples = [run.data.num_examples(c) for c in range(m)]
        p = strategy.p(self.examples)
        if strategy.rule.name == "fedbuff":
            self.d = [1.0 / strategy.rule.buffer] * m
        elif strategy.rule.variant == "identical":
            self.d = [1.0] * m
        else:  # d_i = p_i·τ_i·Σ_j 1/τ_j needs durations: real devices have none in advance, so d_i = p_i·M
            self.d = [pi * m for pi in p]
        self.params = run.params
        self.strategy_state = strategy.init(self.params)
        self.arrivals = Arrivals(run.grid, max_poll_s=run.engine.max_poll_s)
        self.idle: set[int] = set()  # clients whose device was not connected when due: tried at every step
        self.n = 0
        self.start = time.monotonic()
        self.dispatch(range(m), 0)

    def dispatch(self, cids: Sequence[int], version: int) -> None:
        from flwr.app import Message

        from fedsim.engine.messages import MESSAGE_TYPE_TRAIN, encode_train_request

        run, owners = self.run, self.run.owners
        assert owners is not None
        connected = {int(n) for n in run.grid.get_node_ids()}
        messages = []
        for cid in sorted({*cids, *self.idle}):
            node = owners.get(cid)
            if self.examples[cid] == 0 or node is None:
                continue
            if node not in connected:
                self.idle.add(cid)
                continue
            self.idle.discard(cid)
            seed = client_seed(run.scenario.seed, version, cid)
            task = ClientTask(cid=cid, seed=seed, weight=self.d[cid], group=0)
            content = encode_train_request(
                scenario=run.engine.scenario_dict,
                round=version,
                params=self.params,
                tasks=[task],
                round_config={},
            )
            messages.append(
                (cid, Message(content=content, message_type=MESSAGE_TYPE_TRAIN, dst_node_id=node))
            )
        ids = run.grid.push_messages([msg for _, msg in messages])
        for (cid, _), msg_id in zip(messages, ids, strict=True):
            self.arrivals.expect(msg_id, cid, version)

    def step(self) -> StepResult | None:
        from fedsim.engine.messages import decode_train_reply

        sc, n = self.run.scenario, self.n
        if n >= sc.rounds:
            return None
        deadline = time.monotonic() + sc.engine.round_timeout_s
        buffer: list[tuple[int, int, Any]] = []
        unavailable: list[int] = []
        nonfinite: list[int] = []
        while (
            len(buffer) < self.strategy.rule.buffer and (arrived := self.arrivals.next(deadline)) is not None
        ):
            reply, cid, version = arrived
            if reply.has_error() and reply.error.code in UNAVAILABLE_CODES:
                unavailable.append(cid)
                continue
            if reply.has_error():
                raise EngineError(f"client {cid} failed at step {n + 1}: {error_reason(reply)}")
            result = decode_train_reply(reply.content)
            if result.failed:
                nonfinite.append(cid)
            else:
                buffer.append((cid, version, result))
        t_replies = time.monotonic()
        if buffer:
            total = {k: sum(r.group_sums[0][k] for _, _, r in buffer) for k in buffer[0][2].group_sums[0]}
            agg = self.strategy.apply(self.strategy_state, self.params, total)
            self.params, self.strategy_state, metrics = agg.params, agg.state, dict(agg.metrics)
        else:
            metrics = {"aggregated": 0.0}
        t_aggregated = time.monotonic()
        staleness = [n - v for _, v, _ in buffer]
        self.dispatch([cid for cid, _, _ in buffer] + unavailable + nonfinite, n + 1)
        self.n = n + 1
        row: dict[str, Any] = {
            "virtual_time_s": round(time.monotonic() - self.start, 4),
            "clients": len(buffer),
            "dropped": len(unavailable) + len(nonfinite),
            "dropped_unavailable": len(unavailable),
            "dropped_nonfinite": len(nonfinite),
            "staleness_mean": float(np.mean(staleness)) if staleness else None,
            "staleness_max": max(staleness) if staleness else None,
            "staleness": staleness,
            **{k: float(v) for k, v in metrics.items()},
        }
        last = self.n == sc.rounds
        return StepResult(
            row=row, index=self.n, last=last, evaluate=self.run.evaluation_due(self.n, last=last),
            t_replies=t_replies, t_aggregated=t_aggregated,
        )  # fmt: skip

    def evaluate(self) -> dict[str, Any]:
        return evaluate_params(self.run, self.params)

    def result(self) -> tuple[dict[str, torch.Tensor], Any]:
        return self.params, self.strategy_state

    def checkpoint_state(self) -> dict[str, Any]:
        return {"steps": self.n}

    def restore(
        self, state: Mapping[str, Any], strategy_state: Any, params: Mapping[str, torch.Tensor]
    ) -> None:
        raise EngineError(
            f"{self.run.scenario.strategy.name} on real devices steps as replies arrive (wall-clock order), so "
            "its run cannot be resumed to the same result; start it again"
        )


class Arrivals:
    """The replies to the messages in flight, handed out one at a time in the order they came.

    A pull hands each reply over once, and one pull can bring several; those the current step does not take
    wait here for the next one (dropping them would lose the client: nothing would ever answer for it again).
    """

    def __init__(self, grid: Grid, *, poll_s: float = 0.005, max_poll_s: float | None = None) -> None:
        self.grid, self.poll_s, self.max_poll_s = grid, poll_s, max_poll_s or poll_s
        self.in_flight: dict[
            str, tuple[int, int]
        ] = {}  # message id -> (client, model version it started from)
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
