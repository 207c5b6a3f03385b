"""An in-process Flower ``Grid`` for Ray-free engine tests.

``LocalGrid`` delivers each message straight to fedsim's ClientApp (the same code a SuperNode runs, dispatched
by message type) with one persistent ``Context`` per node (as a SuperNode keeps its ``context.state`` between
messages of a run), and records what was sent, so tests can check the one-message-per-worker-per-round rule,
drops and errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from fedsim.engine.messages import MESSAGE_TYPE_PREPARE
from fedsim.engine.worker import client_app


class LocalGrid(Grid):
    def __init__(
        self,
        node_ids: Iterable[int],
        *,
        drop: Callable[[int, int], bool] | None = None,
        fail: Callable[[int, int], bool] | None = None,
        node_configs: dict[int, dict] | None = None,
    ) -> None:
        self.node_ids = list(node_ids)
        self.node_configs = node_configs or {}  # node -> its --node-config (deployment: partition-id=...)
        self.sent: list[tuple[int, int]] = []  # (round, node) of train messages
        self.prepared: list[int] = []  # nodes sent a prepare message
        self.drop = drop or (lambda rnd, node: False)
        self.fail = fail or (lambda rnd, node: False)
        self._replies: dict[str, Message] = {}
        self._contexts: dict[int, Context] = {}
        self._run = None

    def set_run(self, run):
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self):
        return list(self.node_ids)

    def _context(self, node: int) -> Context:
        """What a SuperNode's ClientApp gets: its node id, ``--node-config`` and its state, kept across messages."""
        if node not in self._contexts:
            self._contexts[node] = Context(
                run_id=1,
                node_id=node,
                node_config=self.node_configs.get(node, {}),
                state=RecordDict(),
                run_config={},
            )
        return self._contexts[node]

    def forget_state(self, node: int) -> None:
        """Lose a node's ``context.state`` (a SuperNode that restarted)."""
        self._contexts.pop(node, None)

    def push_messages(self, messages):
        """Deliver each message to the worker now; keep its reply (unless dropped) under a new id."""
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if msg.metadata.message_type == MESSAGE_TYPE_PREPARE:
                self.prepared.append(node)
                ids.append(f"p{len(self.prepared)}")
                msg.metadata.__dict__["_message_id"] = ids[
                    -1
                ]  # as Flower's grid does when it stores a message
                self._replies[ids[-1]] = client_app(msg, self._context(node))
                continue
            rnd = int(msg.content.config_records["fedsim.config"]["round"])
            self.sent.append((rnd, node))
            msg_id = f"m{len(self.sent)}"
            msg.metadata.__dict__["_message_id"] = msg_id
            ids.append(msg_id)
            if self.drop(rnd, node):
                continue
            if self.fail(rnd, node):
                self._replies[msg_id] = Message(Error(code=0, reason="boom"), reply_to=msg)
                continue
            self._replies[msg_id] = client_app(msg, self._context(node))
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - the engine polls itself
        return self.pull_messages(self.push_messages(messages))


class MemoryRecorder:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.checkpoints: list[int] = []

    def write_round(self, row):
        self.rows.append(dict(row))

    def save_checkpoint(self, *, round, params, strategy_state):
        self.checkpoints.append(round)
