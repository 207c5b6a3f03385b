"""The server side of the engine, run inside a Flower ServerApp: the transport to the workers and the run's
settings; :class:`Engine.run` hands the run to the driver (``fedsim.engine.driver``), which runs the scenario's
strategy family behind the loop protocol (``fedsim.engine.loop``).

The engine prepares the workers (one prepare message each, answered when their data and model are built), sends
each worker ONE training message per step with the model and the logical clients it must train, and takes the
replies as they arrive with the round deadline. It also holds what a run keeps secret (a DP run's cohort seed)
and the DP release rule for rows: a DP run writes only its privatised metrics unless
``privacy.release_diagnostics`` (``fedsim.privacy.release``).

The same engine drives a deployment (``fedsim.deploy``): there each SuperNode owns one logical client
(``fedsim.engine.placement``), replies are taken as they arrive (a round plan's ``quorum`` closes the round
early), and a node that disconnects only drops its client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import Message
from flwr.serverapp import Grid

from fedsim.engine.messages import (
    MESSAGE_TYPE_PREPARE,
    MESSAGE_TYPE_TRAIN,
    decode_prepare_reply,
    decode_train_reply,
    encode_prepare_request,
    encode_train_request,
)
from fedsim.engine.placement import NodeIdentity, assign, read_node_identity
from fedsim.engine.rounds import Recorder, RunSummary, client_seed
from fedsim.engine.setup import cohort_seed
from fedsim.engine.transport import UNAVAILABLE_CODES, RoundReplies, error_reason, iter_replies
from fedsim.errors import EngineError
from fedsim.privacy.release import release_row
from fedsim.protocol import ClientTask, WorkerResult
from fedsim.scenario import Scenario
from fedsim.stopping import StopRequest

if TYPE_CHECKING:
    from fedsim.privacy.plan import PrivacyPlan, Spend


class ReleasedRows:
    """A recorder that writes only what a DP run may release (``fedsim.privacy.release``); the rest delegates."""

    def __init__(self, recorder: Recorder, *, diagnostics: bool) -> None:
        self.recorder, self.diagnostics = recorder, diagnostics

    def write_round(self, row: Mapping[str, Any]) -> None:
        self.recorder.write_round(release_row(row, diagnostics=self.diagnostics))

    def save_checkpoint(self, **checkpoint: Any) -> Any:
        return self.recorder.save_checkpoint(**checkpoint)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.recorder, name)


class Engine:
    """Runs a scenario against a Flower ``Grid``.

    Args:
        scenario: the validated scenario.
        recorder: receives every step's metrics and the checkpoints.
        expected_workers: how many workers must register before round 1 (None: wait until the count settles,
            for runtimes that decide the number of SuperNodes themselves, e.g. ``flwr run``).
        on_round: called after every step with the metrics row (progress display).
        placement: how logical clients map to nodes (``fedsim.engine.placement``): ``shard`` (simulation),
            ``partition`` (deployment: each node owns the client its node config names) or ``auto``.
        max_poll_s: the longest pause between pulls while waiting for replies (pauses double from 5 ms).
        stop: set by a signal (``fedsim.stopping``): the driver stops at the next safe point.
        resume: a checkpoint's ``resume`` part to continue from (``fedsim.resume``).
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
        stop: StopRequest | None = None,
        resume: Mapping[str, Any] | None = None,
    ) -> None:
        """``privacy``: the scenario's resolved DP plan and spend when the caller has them; for a DP scenario
        without them the driver resolves them and keeps them in ``self.privacy`` (for the report).

        A DP run's rows go through :class:`ReleasedRows` (to the recorder and to ``on_round``), and its cohorts
        come from ``self.cohort_seed``: a secret (OS CSPRNG) unless ``privacy.insecure_seed``. It is engine state
        (in checkpoints, readable by the owner only), never written to the scenario, metrics or reports."""
        self.scenario = scenario
        self.privacy = privacy
        self.cohort_seed = cohort_seed(scenario)
        shown = on_round or (lambda row: None)
        if scenario.privacy is not None:
            recorder = ReleasedRows(recorder, diagnostics=scenario.privacy.release_diagnostics)
            self.on_round = lambda row: shown(self.released(row))
        else:
            self.on_round = shown
        self.recorder = recorder
        self.expected_workers = expected_workers
        self.scenario_dict = scenario.model_dump(mode="json")
        self.placement = placement
        self.max_poll_s = max_poll_s
        self.stop = stop
        self.resume = resume

    def released(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """What of ``row`` the run writes and shows: all of it, or for a DP run its privatised part."""
        if self.scenario.privacy is None:
            return dict(row)
        return release_row(row, diagnostics=self.scenario.privacy.release_diagnostics)

    def run(self, grid: Grid) -> RunSummary:
        """Run the scenario (or resume it) to its end; see ``fedsim.engine.driver``.

        Raises:
            RunStopped: ``stop`` was set; the run stopped at a safe point after writing a checkpoint.
        """
        from fedsim.engine.driver import Driver

        return Driver(self, grid).run()

    def ask_to_prepare(self, grid: Grid, nodes: Sequence[int]) -> dict[str, int]:
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
        replies = list(
            iter_replies(grid, pending, timeout_s=timeout, max_poll_s=self.max_poll_s, stop=self.stop)
        )
        for reply in replies:
            if reply.has_error():  # keyed by message: Flower's own error replies come from node 0
                node = pending[reply.metadata.reply_to_message_id]
                raise EngineError(f"worker {node} failed to prepare: {error_reason(reply)}")
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
                raise EngineError(f"worker {node} failed in round {rnd}: {error_reason(reply)}")
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
