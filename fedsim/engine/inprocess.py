"""The in-process backend: the engine's Flower ``Grid`` without Ray, for small runs, debugging and tests.

Why this module exists: Flower's Ray simulation costs seconds before round 1 (Ray, a SuperLink, one actor per
worker), which dominates a small run. Here the SAME :class:`~fedsim.engine.server.Engine` talks to the SAME
ClientApp (``fedsim.engine.worker.client_app``) with the same messages, through :class:`InProcessGrid`, which
behaves like a SuperLink and its SuperNodes in one process:

- each node keeps one persistent ``Context`` for the run (its ``context.state`` survives between messages, as
  on a SuperNode), with the node config Flower's simulation gives it (``partition-id``, ``num-partitions``);
- a node works through its messages in the order they were pushed, when the server waits for replies (a pull),
  so the server's deadline starts before the work does;
- deadlines are honoured: a message whose TTL passed before delivery is answered with Flower's
  ``REPLY_MESSAGE_UNAVAILABLE``, one for a node that is not there with ``NODE_UNAVAILABLE``, and a reply that
  took longer than ``reply_deadline_s`` after its message was pushed is not delivered (the engine then counts
  the clients as lost to its round deadline, as it does for a Ray worker that answers too late);
- an exception in the ClientApp becomes an ``Error`` reply with ``CLIENT_APP_RAISED_EXCEPTION`` and the reason
  formatted as a SuperNode formats it; ``KeyboardInterrupt`` (Ctrl-C) is not caught and stops the run.

The nodes run one after another in this thread: several workers here change only how clients are sharded, not
how fast they train. Training runs with one torch thread (:func:`torch_threads`), as a Ray worker does when a
machine has one worker per core: a round's many small tensor operations cost far more in thread hand-offs than
they gain (quickstart on 2 busy cores: 103 s with torch's default of 2 threads, 9.7 s with 1).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedsim.engine.placement import NUM_PARTITIONS, PARTITION_ID

RUN_ID = 1
"""The run id of an in-process run (there is only one run per grid)."""

FIRST_NODE_ID = 2
"""Node ids of in-process workers start here: 1 is the SuperLink's own id (``SUPERLINK_NODE_ID``)."""

logger = logging.getLogger(__name__)


def simulation_node_configs(node_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The node configs Flower's simulation gives its SuperNodes: ``partition-id`` i of ``num-partitions`` n."""
    return {node: {PARTITION_ID: i, NUM_PARTITIONS: len(node_ids)} for i, node in enumerate(node_ids)}


def raised_reason(exc: BaseException) -> str:
    """The reason a SuperNode puts in the error reply of a ClientApp that raised, e.g.
    ``<class 'ZeroDivisionError'>:<'division by zero'>``."""
    return f"{type(exc)}:<'{exc}'>"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Within the block torch uses ``n`` intra-op threads; the previous number is restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def server_task_identity(run_id: int = RUN_ID) -> Iterator[None]:
    """Within the block, messages created in this process come from the SuperLink's task of run ``run_id``.

    Flower's ``Message`` constructor reads the running task's identity, which Flower's own runtimes set for
    a ServerApp process; an in-process run sets it here and restores what was there before.
    """
    saved = {k: TaskIdentity.__dict__[k] for k in ("_task_id", "_run_id", "_node_id")}
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(TaskIdentity, k, v)


class InProcessGrid(Grid):
    """A Flower ``Grid`` whose nodes run ``app`` in this process (see the module docstring for the rules).

    Args:
        node_ids: the workers' node ids.
        app: the ClientApp every node runs (default: fedsim's worker).
        node_configs: node id -> its node config (default: none).
        reply_deadline_s: a reply that comes later than this after its message was pushed is not delivered
            (None: no deadline but the messages' TTL).
        run_id: the run's id in the nodes' contexts.
    """

    def __init__(
        self,
        node_ids: Iterable[int],
        *,
        app: ClientApp | None = None,
        node_configs: Mapping[int, Mapping[str, Any]] | None = None,
        reply_deadline_s: float | None = None,
        run_id: int = RUN_ID,
    ) -> None:
        if app is None:
            from fedsim.engine.worker import client_app as app
        self.app: ClientApp = app
        self.node_ids = [int(n) for n in node_ids]
        self.node_configs = {int(k): dict(v) for k, v in (node_configs or {}).items()}
        self.reply_deadline_s = reply_deadline_s
        self.run_id = run_id
        self._run: Any = None
        self._contexts: dict[int, Context] = {}
        self._inbox: deque[tuple[str, Message, float]] = deque()
        self._replies: dict[str, Message] = {}
        self._counter = itertools.count(1)

    # --- Grid's bookkeeping -------------------------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        if self._run is None:
            from flwr.supercore.run import Run

            self._run = Run.create_empty(self.run_id)
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    # --- the nodes ----------------------------------------------------------------------------------------
    def context(self, node: int) -> Context:
        """Node ``node``'s context: its id, node config and ``state``, kept across the run's messages."""
        if node not in self._contexts:
            self._contexts[node] = Context(
                run_id=self.run_id,
                node_id=node,
                node_config=dict(self.node_configs.get(node, {})),
                state=RecordDict(),
                run_config={},
            )
        return self._contexts[node]

    def forget_state(self, node: int) -> None:
        """Lose node ``node``'s ``context.state`` (a SuperNode that restarted)."""
        self._contexts.pop(node, None)

    def deliver(self, msg: Message) -> Message | None:
        """Run the destination node's ClientApp on ``msg`` and return its reply (None: no reply comes)."""
        node = int(msg.metadata.dst_node_id)
        meta = msg.metadata
        if meta.created_at + meta.ttl < time.time():
            return _error(msg, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, "the message expired (its TTL passed)")
        if node not in self.node_ids:
            return _error(msg, ErrorCode.NODE_UNAVAILABLE, f"node {node} is not connected")
        try:
            return self.app(message=msg, context=self.context(node))
        except Exception as exc:  # as a SuperNode does: the server gets the reason; the node goes on
            logger.debug("ClientApp of node %s raised", node, exc_info=True)
            return _error(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, raised_reason(exc))

    # --- messages -----------------------------------------------------------------------------------------
    def new_message_id(self, msg: Message) -> str:
        """The id the link gives a pushed message."""
        return f"inprocess-{next(self._counter)}"

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Queue each message for its node (delivered when replies are pulled); return their ids."""
        ids = []
        now = time.monotonic()
        for msg in messages:
            msg_id = self.new_message_id(msg)
            msg.metadata.__dict__["_message_id"] = msg_id  # as Flower's link does when it stores a message
            self._inbox.append((msg_id, msg, now))
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Let the nodes work through every queued message (in push order), then return the replies to
        ``message_ids`` that came (each reply is returned once)."""
        self._work_through_inbox()
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def _work_through_inbox(self) -> None:
        while self._inbox:
            msg_id, msg, pushed = self._inbox.popleft()
            if msg_id in self._replies:  # already answered by the link (e.g. for a node that went away)
                continue
            reply = self.deliver(msg)
            late = self.reply_deadline_s is not None and time.monotonic() - pushed > self.reply_deadline_s
            if reply is None or late:
                continue
            reply.metadata.__dict__["_message_id"] = f"{msg_id}.reply"
            self._replies[msg_id] = reply

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push ``messages`` and return their replies (the nodes answer within this call)."""
        ids = self.push_messages(messages)
        return self.pull_messages(ids)


def _error(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def run_on_inprocess_grid(
    main: Callable[[InProcessGrid], Any],
    *,
    workers: int,
    reply_deadline_s: float | None = None,
    threads: int = 1,
) -> Any:
    """Call ``main(grid)`` with an :class:`InProcessGrid` of ``workers`` fedsim workers, as Flower's
    simulation would call a ServerApp's main with its grid, with ``threads`` torch threads; return what it
    returns."""
    nodes = list(range(FIRST_NODE_ID, FIRST_NODE_ID + workers))
    grid = InProcessGrid(
        nodes, node_configs=simulation_node_configs(nodes), reply_deadline_s=reply_deadline_s
    )
    with server_task_identity(grid.run_id), torch_threads(threads):
        return main(grid)
