"""Messages to and from the workers through a Flower Grid: waiting for workers to register, and taking the
replies to the messages in flight as they arrive, with a deadline. Every loop of the engine uses these."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedsim.errors import EngineError
from fedsim.protocol import WorkerResult
from fedsim.stopping import RunStopped, StopRequest


def wait_for_workers(
    grid: Grid,
    *,
    expected: int | None,
    timeout_s: float,
    poll_s: float = 0.2,
    settle_s: float = 2.0,
    stop: StopRequest | None = None,
) -> list[int]:
    """Block until ``expected`` workers have registered (or, if unknown, until their number settles).

    Raises:
        EngineError: the deadline passed first.
        RunStopped: ``stop`` was set while waiting (nothing has run yet: there is no checkpoint).
    """
    deadline = time.monotonic() + timeout_s
    last: list[int] = []
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        stop_if_asked(stop)
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if nodes != last:
            last, stable_since = nodes, time.monotonic()
        if expected is not None and len(nodes) >= expected:
            return nodes[:expected] if len(nodes) > expected else nodes
        if expected is None and nodes and time.monotonic() - stable_since >= settle_s:
            return nodes
        time.sleep(poll_s)
    want = f"{expected}" if expected is not None else "at least 1"
    raise EngineError(
        f"engine.register_timeout_s: only {len(last)} of {want} workers registered within {timeout_s:g} s."
    )


def stop_if_asked(stop: StopRequest | None) -> None:
    """Raise :class:`RunStopped` (before any step: nothing to checkpoint) when ``stop`` is set."""
    if stop:
        raise RunStopped(stop.signal_name or "SIGINT", step=0, checkpoint=None)


def error_reason(reply: Message) -> str:
    """An error reply's reason on one line: Flower wraps the worker's exception as ``<class 'E'>:<'message'>``,
    whose message may span lines (Ray's ActorDiedError explains itself in a paragraph); its first line names
    what happened, and a worker process that died is said so plainly."""
    reason = str(reply.error.reason)
    if "ActorDiedError" in reason or "RayActorError" in reason:
        return f"its worker process died {WORKER_RESTARTS + 1} times running it (killed, or out of memory?)"
    first = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
    return first if len(first) <= 300 else first[:297] + "..."


WORKER_RESTARTS = 3
"""How many times Ray restarts a dead worker process and runs its message again (``fedsim.engine.simulation``)
before the error reaches the engine and the run stops (resumable from its newest checkpoint)."""


# Replies Flower's runtime makes itself when the destination cannot answer: the node went away (or the message
# expired). The client is counted as dropped and the run goes on; every other error stops the run.
UNAVAILABLE_CODES = frozenset(
    {
        ErrorCode.MESSAGE_UNAVAILABLE,
        ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
        ErrorCode.NODE_UNAVAILABLE,
        ErrorCode.CLIENT_APP_CRASHED,
    }
)


def iter_replies(
    grid: Grid,
    message_ids: Iterable[str],
    *,
    timeout_s: float,
    poll_s: float = 0.005,
    max_poll_s: float | None = None,
    stop: StopRequest | None = None,
) -> Iterator[Message]:
    """Yield the replies to ``message_ids`` as they arrive, until all have come or ``timeout_s`` passed.

    The caller may stop early (e.g. after the first K replies); nothing more is pulled then. Between empty
    pulls it sleeps ``poll_s``, doubling up to ``max_poll_s`` (default: no growth). Flower's
    ``send_and_receive`` polls every 0.1 s and returns only when all replies are in; polling at 5 ms takes up to
    0.1 s off every simulated round, and growing to 0.1 s spares a remote SuperLink a busy loop.

    ``stop``: checked between pulls; when set, :class:`RunStopped` is raised (for waits that may be abandoned:
    the workers' start-up, before the first step).
    """
    deadline = time.monotonic() + timeout_s
    waiting, pause = set(message_ids), poll_s
    while waiting and time.monotonic() < deadline:
        stop_if_asked(stop)
        got = list(grid.pull_messages(sorted(waiting)))
        waiting -= {r.metadata.reply_to_message_id for r in got}
        yield from got
        if waiting and not got:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, max_poll_s or poll_s)
        elif got:
            pause = poll_s


def collect_replies(
    grid: Grid, message_ids: Iterable[str], *, timeout_s: float, poll_s: float = 0.005
) -> list[Message]:
    """Pull the replies to ``message_ids`` until all have come or ``timeout_s`` passed; return those that came."""
    return list(iter_replies(grid, message_ids, timeout_s=timeout_s, poll_s=poll_s))


@dataclass
class RoundReplies:
    """What came back from one round's messages, and which clients were lost on the way."""

    results: list[WorkerResult]
    lost_timeout: list[int] = field(default_factory=list)
    """Clients whose node did not answer before the round deadline."""
    lost_unavailable: list[int] = field(default_factory=list)
    """Clients whose node went away (Flower answered for it: node unavailable, ClientApp crashed)."""
    late: list[int] = field(default_factory=list)
    """Clients whose reply was not waited for: the round plan's quorum was reached first."""
    round_trip_s: float = 0.0
