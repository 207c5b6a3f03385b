"""The in-process Grid of ``fedsim.engine.inprocess`` with test hooks, for Ray-free engine tests.

``LocalGrid`` is :class:`~fedsim.engine.inprocess.InProcessGrid` (fedsim's ClientApp, one persistent ``Context``
per node, replies when the server pulls) plus what tests need: it records what was sent, so tests can check the
one-message-per-worker-per-round rule, and it can drop a train message (no reply: the node missed the deadline)
or answer it with an error. Node configs are empty unless given (``--node-config`` in deployment tests).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Error, Message

from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.messages import MESSAGE_TYPE_PREPARE


class LocalGrid(InProcessGrid):
    def __init__(
        self,
        node_ids: Iterable[int],
        *,
        drop: Callable[[int, int], bool] | None = None,
        fail: Callable[[int, int], bool] | None = None,
        node_configs: dict[int, dict] | None = None,
    ) -> None:
        super().__init__(node_ids, node_configs=node_configs)
        self.node_configs = node_configs or {}  # the caller's dict: tests read it back
        self.sent: list[tuple[int, int]] = []  # (round, node) of train messages
        self.prepared: list[int] = []  # nodes sent a prepare message
        self.drop = drop or (lambda rnd, node: False)
        self.fail = fail or (lambda rnd, node: False)

    def new_message_id(self, msg: Message) -> str:
        """``p<k>`` for the k-th prepare message, ``m<k>`` for the k-th train message (recorded in ``prepared``
        and ``sent``)."""
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type == MESSAGE_TYPE_PREPARE:
            self.prepared.append(node)
            return f"p{len(self.prepared)}"
        self.sent.append((round_of(msg), node))
        return f"m{len(self.sent)}"

    def deliver(self, msg: Message) -> Message | None:
        if msg.metadata.message_type != MESSAGE_TYPE_PREPARE:
            rnd, node = round_of(msg), msg.metadata.dst_node_id
            if self.drop(rnd, node):
                return None
            if self.fail(rnd, node):
                return Message(Error(code=0, reason="boom"), reply_to=msg)
        return super().deliver(msg)


def round_of(msg: Message) -> int:
    """The round (or step, or superstep) a train message is for."""
    return int(msg.content.config_records["fedsim.config"]["round"])


class MemoryRecorder:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.checkpoints: list[int] = []

    def write_round(self, row):
        self.rows.append(dict(row))

    def save_checkpoint(self, *, round, params, strategy_state, final=False, resume=None):
        self.checkpoints.append(round)
        self.final_params = params


def run_traced(scenario: Any, workers: int = 2) -> tuple[MemoryRecorder, int, float]:
    """Run ``scenario`` on a ``LocalGrid`` of ``workers`` nodes under ``tracemalloc``: the recorder, the peak of
    traced Python memory in bytes and the wall seconds."""
    from fedsim.engine.server import Engine

    rec = MemoryRecorder()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        Engine(scenario, rec, expected_workers=workers).run(LocalGrid(list(range(1, workers + 1))))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return rec, peak, time.perf_counter() - start
