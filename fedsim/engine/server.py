"""The server side of the engine: the round loop, run inside a Flower ServerApp.

The engine owns the loop: it waits (with a deadline) for every worker to register, asks the strategy for the
round's clients, sends each worker ONE message with the model and the list of logical clients it must train,
collects one reply per worker (with a deadline), lets the strategy aggregate, evaluates centrally, and hands
each round's metrics to a recorder. Randomness comes from the streams of ``fedsim.randomness``: availability,
failures, client seeds and non-DP cohorts from the scenario seed; a DP run's cohorts from a secret seed the engine
holds (``Engine.cohort_seed``), drawn from the whole population before offline clients are dropped, so the
accountant's q = s/N is what an observer of the public seed faces. A loop that does not implement DP refuses a
DP scenario before anything starts (:func:`check_loop_privacy`), and a DP run writes only its privatised metrics
unless ``privacy.release_diagnostics`` (``fedsim.privacy.release``).

The same loop drives a deployment (``fedsim.deploy``): there each SuperNode owns one logical client
(``fedsim.engine.placement``), replies are taken as they arrive (a round plan's ``quorum`` closes the round
early), and a node that disconnects only drops its client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp import Grid

from fedsim.data import FederatedData
from fedsim.engine.messages import (
    MESSAGE_TYPE_PREPARE,
    MESSAGE_TYPE_TRAIN,
    decode_prepare_reply,
    decode_train_reply,
    encode_prepare_request,
    encode_train_request,
)
from fedsim.engine.placement import NodeIdentity, assign, partition_owners, read_node_identity
from fedsim.engine.placement import shard as shard  # re-exported: the stable sharding rule
from fedsim.engine.rounds import (  # re-exported: tests and callers import them from here too
    LOOP_PRIVACY as LOOP_PRIVACY,
)
from fedsim.engine.rounds import (
    Recorder as Recorder,
)
from fedsim.engine.rounds import (
    RunSummary as RunSummary,
)
from fedsim.engine.rounds import (
    check_loop_privacy as check_loop_privacy,
)
from fedsim.engine.rounds import (
    client_seed as client_seed,
)
from fedsim.engine.rounds import (
    evaluate as evaluate,
)
from fedsim.engine.rounds import (
    loop_of as loop_of,
)
from fedsim.engine.rounds import (
    round_timings as round_timings,
)
from fedsim.engine.setup import build_data, build_initial_model, cohort_seed, evaluation_data, noise_generator
from fedsim.engine.transport import (
    UNAVAILABLE_CODES as UNAVAILABLE_CODES,
)
from fedsim.engine.transport import (
    RoundReplies as RoundReplies,
)
from fedsim.engine.transport import (
    collect_replies as collect_replies,
)
from fedsim.engine.transport import (
    iter_replies as iter_replies,
)
from fedsim.engine.transport import (
    wait_for_workers as wait_for_workers,
)
from fedsim.errors import EngineError
from fedsim.privacy.release import release_row
from fedsim.protocol import ClientTask, WorkerResult
from fedsim.randomness import Stream, generator
from fedsim.scenario import Scenario
from fedsim.scenario.devices import DeviceProfiles
from strategies import Decentralised, EventStrategy, ReducedUpdates, build_strategy
from strategies.base import RoundPlan

if TYPE_CHECKING:
    from fedsim.privacy.plan import PrivacyPlan, Spend


def reduce_replies(results: Sequence[WorkerResult], params: Mapping[str, torch.Tensor]) -> ReducedUpdates:
    """Sum the workers' reduced sums into one :class:`ReducedUpdates`."""
    total = {k: torch.zeros_like(v) for k, v in params.items() if v.is_floating_point()}
    for r in results:
        for k, v in r.weighted_delta_sum.items():
            total[k] = total[k] + v
    return ReducedUpdates(
        weighted_delta_sum=total,
        weight_sum=sum(r.weight_sum for r in results),
        num_clients=sum(len(r.client_ids) for r in results),
        update_norms=tuple(x for r in results for x in r.update_norms),
        client_stats={
            name: tuple(x for r in results for x in r.client_stats.get(name, []))
            for name in sorted({n for r in results for n in r.client_stats})
        },
    )


def draw_cohort(
    strategy: Any,
    state: Any,
    *,
    round: int,
    population: int,
    online: np.ndarray,
    rng: np.random.Generator,
    secret_rng: np.random.Generator | None,
) -> tuple[RoundPlan, list[int]]:
    """A synchronous round's cohort: the strategy's plan and, of its clients, those online (in plan order).

    Without ``secret_rng`` (a run without client-level DP) the strategy picks among the ``online`` clients with
    the public ``rng``. With it (client-level DP) the strategy samples from the whole population with the secret
    stream and the offline clients are dropped afterwards: each client is then in the sample with the q = s/N
    the accountant is told, whatever the availability, and who was sampled cannot be replayed from the public
    seed. (Sampling among the online clients instead would give an online client q = s/N_online > s/N for a
    fixed-size cohort.)
    """
    if secret_rng is None:
        plan = strategy.configure_round(state, round=round, available=online, rng=rng)
        return plan, list(plan.client_ids)
    plan = strategy.configure_round(state, round=round, available=np.arange(population), rng=secret_rng)
    up = set(online.tolist())
    return plan, [c for c in plan.client_ids if c in up]


def mechanism_fields(scenario: Mapping[str, Any], strategy: Any, plan: RoundPlan) -> dict[str, float]:
    """The DP mechanism a round ran, for its metrics row, from the settings the workers were sent (the DP
    wrapper adds the update's ``dp_noise_std`` and ``dp_clip``): adaptive clipping's count noise and
    sensitivity; sample-level DP's per-step noise std σ·C and C."""
    if scenario.get("privacy") is None:
        return {}
    from fedsim.engine.messages import train_config
    from strategies.dp import CENTRED_COUNT_SENSITIVITY, ClientLevelDP

    cfg = train_config(scenario, plan.config)
    if cfg.sample_dp is not None:
        dp = cfg.sample_dp
        return {"dp_noise_std": dp.noise_multiplier * dp.max_norm, "dp_clip": dp.max_norm}
    if isinstance(strategy, ClientLevelDP) and strategy.adaptive:
        sensitivity = CENTRED_COUNT_SENSITIVITY  # what the released centred count moves by (strategies.dp)
        return {"dp_count_noise_std": strategy.count_noise_std, "dp_count_sensitivity": sensitivity}
    return {}


class ReleasedRows:
    """A recorder that writes only what a DP run may release (``fedsim.privacy.release``); the rest delegates."""

    def __init__(self, recorder: Recorder, *, diagnostics: bool) -> None:
        self.recorder, self.diagnostics = recorder, diagnostics

    def write_round(self, row: Mapping[str, Any]) -> None:
        self.recorder.write_round(release_row(row, diagnostics=self.diagnostics))

    def save_checkpoint(
        self, *, round: int, params: Mapping[str, torch.Tensor], strategy_state: Any, final: bool = False
    ) -> None:
        self.recorder.save_checkpoint(round=round, params=params, strategy_state=strategy_state, final=final)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.recorder, name)


class Engine:
    """Runs a scenario's rounds against a Flower ``Grid``.

    Args:
        scenario: the validated scenario.
        recorder: receives every round's metrics and the checkpoints.
        expected_workers: how many workers must register before round 1 (None: wait until the count settles,
            for runtimes that decide the number of SuperNodes themselves, e.g. ``flwr run``).
        on_round: called after every round with the metrics row (progress display).
        placement: how logical clients map to nodes (``fedsim.engine.placement``): ``shard`` (simulation),
            ``partition`` (deployment: each node owns the client its node config names) or ``auto``.
        max_poll_s: the longest pause between pulls while waiting for replies (pauses double from 5 ms).
    """

    def __init__(
        self,
        scenario: Scenario,
        recorder: Recorder,
        *,
        expected_workers: int | None,
        on_round: Callable[[Mapping[str, Any]], None] | None = None,
        privacy: tuple[PrivacyPlan, Spend] | None = None,
        placement: str = "shard",
        max_poll_s: float = 0.005,
    ) -> None:
        """``privacy``: the scenario's resolved DP plan and spend when the caller has them; for a DP scenario
        without them the engine resolves them and keeps them in ``self.privacy`` (for the report).

        A DP run's rows go through :class:`ReleasedRows` (to the recorder and to ``on_round``), and its cohorts
        come from ``self.cohort_seed``: a secret (OS CSPRNG) unless ``privacy.insecure_seed``. It is engine state
        (for a checkpoint, readable by the owner only), never written to the scenario, metrics or reports."""
        self.scenario = scenario
        self.privacy = privacy
        self.cohort_seed = cohort_seed(scenario)
        shown = on_round or (lambda row: None)
        if scenario.privacy is not None:
            diagnostics = scenario.privacy.release_diagnostics
            recorder = ReleasedRows(recorder, diagnostics=diagnostics)
            self.on_round = lambda row: shown(release_row(row, diagnostics=diagnostics))
        else:
            self.on_round = shown
        self.recorder = recorder
        self.expected_workers = expected_workers
        self.scenario_dict = scenario.model_dump(mode="json")
        self.placement = placement
        self.max_poll_s = max_poll_s

    def run(self, grid: Grid) -> RunSummary:
        sc = self.scenario
        strategy = build_strategy(sc.strategy, sc.population.clients)
        check_loop_privacy(sc, loop_of(strategy))  # before any worker is waited for or prepared
        nodes = wait_for_workers(grid, expected=self.expected_workers, timeout_s=sc.engine.register_timeout_s)
        # Workers import, build their data and model while the server builds its own (start-up in parallel).
        pending = self._ask_to_prepare(grid, nodes)
        data: FederatedData = evaluation_data(build_data(sc), sc)
        model = build_initial_model(sc, data)
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model_bytes = sum(v.numel() * v.element_size() for v in params.values())
        if isinstance(strategy, Decentralised):  # gossip: no global model; nodes live on their workers
            from fedsim.engine.gossip_loop import run_gossip_loop

            return run_gossip_loop(self, grid, nodes=nodes, pending_prepare=pending, data=data, model=model)
        if isinstance(strategy, EventStrategy):  # FedFix, async FedAvg, FedBuff, sync FedAvg with a deadline
            from fedsim.engine.event_loop import run_event_loop

            return run_event_loop(
                self, grid, nodes=nodes, pending_prepare=pending, data=data, model=model, params=params,
                strategy=strategy,
            )  # fmt: skip
        from strategies.diff2 import Diff2Strategy

        if isinstance(strategy, Diff2Strategy):  # DIFF2-GD, DP-GD: full-batch rounds, x_{r−2} kept on the workers
            from fedsim.engine.diff2_loop import run_diff2_loop

            return run_diff2_loop(
                self, grid, nodes=nodes, pending_prepare=pending, data=data, model=model, params=params,
                strategy=strategy,
            )  # fmt: skip
        if sc.privacy is not None:  # imported here: the accountants cost seconds of start-up to import
            from fedsim.privacy.plan import plan_and_spend
            from strategies.dp import client_level_dp, sample_level_dp

            sizes = [data.num_examples(c) for c in range(sc.population.clients)]
            self.privacy = self.privacy or plan_and_spend(sc, sizes)
            if sc.privacy.level == "sample":
                strategy = sample_level_dp(strategy, *self.privacy)
            else:
                strategy = client_level_dp(strategy, *self.privacy, noise_generator(sc))
        state = strategy.init(params)
        profiles = DeviceProfiles.sample(
            sc.population.devices, sc.population.clients, generator(sc.seed, Stream.DEVICE)
        )
        secret_cohort = sc.privacy is not None and sc.privacy.level == "client"
        identities = self.await_prepared(grid, pending)
        owners = partition_owners(identities, population=sc.population.clients, mode=self.placement)

        summary = RunSummary(rounds=sc.rounds)
        start = time.monotonic()
        virtual_time = 0.0
        for rnd in range(1, sc.rounds + 1):
            t0 = time.monotonic()
            rng = generator(sc.seed, Stream.ROUND, rnd)
            online = np.flatnonzero(profiles.online(np.arange(sc.population.clients), virtual_time, rng))
            if owners is not None:  # deployment: only clients whose device is connected now can be selected
                connected = set(int(n) for n in grid.get_node_ids())
                online = np.asarray([c for c in online if owners.get(int(c)) in connected], dtype=np.int64)
            # a DP run's cohort is drawn from its secret stream (the scenario seed's with privacy.insecure_seed);
            # sample-level DP claims no amplification by the cohort, so it is drawn among the online clients
            secret_rng = None if self.cohort_seed is None else generator(self.cohort_seed, Stream.COHORT, rnd)
            plan, present = draw_cohort(
                strategy, state, round=rnd, population=sc.population.clients, online=online,
                rng=secret_rng if secret_rng is not None and not secret_cohort else rng,
                secret_rng=secret_rng if secret_cohort else None,
            )  # fmt: skip
            fails = rng.random(len(present)) < profiles.failure
            started = [c for c, f in zip(present, fails, strict=True) if not f]
            replies = self.train_round(
                grid, nodes, rnd, params, started, plan.config, owners=owners, quorum=plan.quorum
            )
            results = replies.results
            t_replies = time.monotonic()
            reduced = reduce_replies(results, params)
            agg = strategy.aggregate(state, params, reduced)
            params, state = agg.params, agg.state
            t_aggregated = time.monotonic()

            trained = [c for r in results for c in r.client_ids]
            examples = {c: n for r in results for c, n in zip(r.client_ids, r.num_examples, strict=True)}
            round_virtual = max(
                (
                    profiles.duration(
                        c, examples=examples[c], epochs=sc.client.epochs, model_bytes=model_bytes
                    )
                    for c in trained
                ),
                default=0.0,
            )
            virtual_time += round_virtual
            losses = [(n, l) for r in results for n, l in zip(r.num_examples, r.train_loss, strict=True)]
            row: dict[str, Any] = {
                "round": rnd,
                "virtual_time_s": round(virtual_time, 6),
                "round_virtual_s": round(round_virtual, 6),
                "selected": len(plan.client_ids),
                "clients": len(trained),
                "dropped": len(plan.client_ids) - len(trained),
                "dropped_offline": len(plan.client_ids) - len(present),
                "dropped_failure": int(fails.sum()),
                "dropped_timeout": len(replies.lost_timeout),
                "dropped_unavailable": len(replies.lost_unavailable),
                "dropped_late": len(replies.late),
                "dropped_nonfinite": sum(len(r.failed) for r in results),
                "train_loss": (sum(n * l for n, l in losses) / sum(n for n, _ in losses)) if losses else None,
                **{k: float(v) for k, v in agg.metrics.items()},
                **mechanism_fields(self.scenario_dict, strategy, plan),
            }
            if rnd % sc.evaluation.every == 0 or rnd == sc.rounds:
                model.load_state_dict(params)
                row["test_loss"], row["test_accuracy"] = evaluate(model, data.test_x, data.test_y)
            train_s = max((r.train_s for r in results), default=0.0)
            row |= round_timings(
                start=start, t0=t0, t_replies=t_replies, t_aggregated=t_aggregated, train_s=train_s
            )
            row["time_round_trip_s"] = round(replies.round_trip_s, 4)
            self.recorder.write_round(row)
            every = sc.output.checkpoint_every
            if every and rnd % every == 0 and rnd != sc.rounds:
                self.recorder.save_checkpoint(round=rnd, params=params, strategy_state=state)
            self.on_round(row)
            summary.last_row = row
        self.recorder.save_checkpoint(round=sc.rounds, params=params, strategy_state=state, final=True)
        return summary

    def _ask_to_prepare(self, grid: Grid, nodes: Sequence[int]) -> dict[str, int]:
        """Send every worker a prepare message without waiting; return message id -> node."""
        messages = [
            Message(
                content=encode_prepare_request(self.scenario_dict),
                message_type=MESSAGE_TYPE_PREPARE,
                dst_node_id=node,
            )
            for node in nodes
        ]
        return dict(zip(grid.push_messages(messages), nodes, strict=True))

    def await_prepared(self, grid: Grid, pending: dict[str, int]) -> dict[int, NodeIdentity]:
        """Wait (with the round deadline) until every worker is ready; return what each says about itself
        (its partition, in deployment).

        Raises:
            EngineError: a worker failed to prepare (e.g. its data could not be built) or missed the deadline.
        """
        timeout = self.scenario.engine.round_timeout_s
        replies = list(iter_replies(grid, pending, timeout_s=timeout, max_poll_s=self.max_poll_s))
        for reply in replies:
            if reply.has_error():  # keyed by message: Flower's own error replies come from node 0
                node = pending[reply.metadata.reply_to_message_id]
                raise EngineError(f"worker {node} failed to prepare: {reply.error.reason}")
        if len(replies) < len(pending):
            answered = {pending[r.metadata.reply_to_message_id] for r in replies}
            late = sorted(n for n in pending.values() if n not in answered)
            raise EngineError(f"engine.round_timeout_s: workers {late} were not ready within {timeout:g} s")
        for r in replies:
            decode_prepare_reply(r.content)  # a reply of the wrong shape fails here, before round 1
        return {pending[r.metadata.reply_to_message_id]: read_node_identity(r.content) for r in replies}

    def train_round(
        self,
        grid: Grid,
        nodes: Sequence[int],
        rnd: int,
        params: Mapping[str, torch.Tensor],
        clients: Sequence[int],
        round_config: Mapping[str, Any],
        *,
        owners: Mapping[int, int] | None = None,
        quorum: int | None = None,
        tasks: Sequence[ClientTask] | None = None,
    ) -> RoundReplies:
        """Send one message per node with clients this round and take the replies as they arrive: all of them,
        or, with a ``quorum``, until that many clients' results are in (the rest count as late). ``tasks``: the
        clients' tasks when the caller sets them (event-driven strategies: weights and arrival groups)."""
        messages, by_node = [], assign(clients, nodes, owners)
        given = {t.cid: t for t in tasks or ()}
        for node, cids in by_node.items():
            if not cids:
                continue
            tasks_here = [given.get(c) or ClientTask(cid=c, seed=client_seed(self.scenario.seed, rnd, c)) for c in cids]
            content = encode_train_request(
                scenario=self.scenario_dict, round=rnd, params=params, tasks=tasks_here, round_config=round_config
            )
            messages.append(Message(content=content, message_type=MESSAGE_TYPE_TRAIN, dst_node_id=node))
        if not messages:
            return RoundReplies(results=[])
        sent = time.monotonic()
        node_of = dict(zip(grid.push_messages(messages), (int(m.metadata.dst_node_id) for m in messages), strict=True))
        out, answered, unavailable, quorum_met = RoundReplies(results=[]), set(), set(), False
        got: list[tuple[int, WorkerResult]] = []
        timeout = self.scenario.engine.round_timeout_s
        for reply in iter_replies(grid, node_of, timeout_s=timeout, max_poll_s=self.max_poll_s):
            node = node_of[reply.metadata.reply_to_message_id]  # Flower's own error replies come from node 0
            if reply.has_error() and reply.error.code in UNAVAILABLE_CODES:
                unavailable.add(node)
            elif reply.has_error():
                raise EngineError(f"worker {node} failed in round {rnd}: {reply.error.reason}")
            else:
                answered.add(node)
                got.append((node, decode_train_reply(reply.content)))
            if quorum is not None and sum(len(r.client_ids) for _, r in got) >= quorum:
                quorum_met = True
                break
        out.round_trip_s = time.monotonic() - sent
        # in node order, not arrival order: sums over the replies do not depend on which worker was faster
        out.results = [r for _, r in sorted(got, key=lambda pair: pair[0])]
        for node, cids in by_node.items():
            if node in unavailable:
                out.lost_unavailable += cids
            elif node not in answered:
                (out.late if quorum_met else out.lost_timeout).extend(cids)
        return out
