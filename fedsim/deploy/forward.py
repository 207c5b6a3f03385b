"""The deployed ClientApp: a light forwarder to a warm fedsim worker on the same device.

A Flower 1.42 SuperNode (``--isolation subprocess``) starts a fresh ``flwr-clientapp`` process for every message.
Importing fedsim's worker there (torch, data, model) costs seconds per message, so the app's ClientApp component
is this module, which imports only Flower and the standard library. When the node config names a worker daemon
(``fedsim-worker="/path/to/worker.sock"``, started with ``python -m fedsim.deploy.warm_worker``), the Message
and Context go to it over a Unix socket, serialised with Flower's own protobuf serde (no pickle), and its reply
(and the Context's state as the worker left it) come back. Without the key the message is handled here, by
``fedsim.engine.worker`` imported on first use: the same worker, so real devices without a daemon still work.

A daemon that is configured but cannot be reached, or that closes the connection before replying, gives one
error reply naming its socket (the run then stops with that line), never a hang.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=E0611
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611

WORKER_KEY = "fedsim-worker"
"""The node config key naming the worker daemon's Unix socket."""

MAGIC = b"FEDSIMW1"
"""The first bytes of every request and reply: the protocol and its version (a socket of something else fails
with one line, not a misread)."""

CONNECT_TIMEOUT_S = 10.0
_LENGTH = struct.Struct(">Q")


class WorkerUnreachable(ConnectionError):
    """The worker daemon could not be reached, or it closed the connection before replying."""


def send_frames(sock: socket.socket, *frames: bytes) -> None:
    """``MAGIC`` then each frame as an 8-byte big-endian length and its bytes."""
    sock.sendall(MAGIC + b"".join(_LENGTH.pack(len(f)) + f for f in frames))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, or :class:`EOFError` when the peer closes first."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def recv_frames(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` frames sent by :func:`send_frames` (ValueError when the magic is wrong)."""
    magic = recv_exact(sock, len(MAGIC))
    if magic != MAGIC:
        raise ValueError(f"not a fedsim worker protocol stream (began with {magic!r})")
    return [recv_exact(sock, _LENGTH.unpack(recv_exact(sock, _LENGTH.size))[0]) for _ in range(count)]


def encode(message: Message, context: Context) -> tuple[bytes, bytes]:
    """A Message and a Context as Flower's protobuf bytes."""
    return message_to_proto(message).SerializeToString(), context_to_proto(context).SerializeToString()


def decode(message: bytes, context: bytes) -> tuple[Message, Context]:
    """The inverse of :func:`encode`."""
    m, c = ProtoMessage(), ProtoContext()
    m.ParseFromString(message)
    c.ParseFromString(context)
    return message_from_proto(m), context_from_proto(c)


def call_worker(path: str | Path, message: Message, context: Context) -> tuple[Message, Context]:
    """Send ``message`` and ``context`` to the daemon at ``path``; return its reply and the Context after it.

    Raises:
        WorkerUnreachable: no daemon listens there, or it closed the connection before replying.
    """
    request = encode(message, context)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise WorkerUnreachable(
                f"fedsim worker daemon unreachable at {path}: {exc.strerror or exc} (start it with "
                f"`python -m fedsim.deploy.warm_worker --socket {path}`, or leave {WORKER_KEY} out of the node "
                "config)"
            ) from None
        sock.settimeout(None)  # training takes what it takes; the server's round deadline bounds the round
        try:
            send_frames(sock, *request)
            reply, state = recv_frames(sock, 2)
        except (OSError, EOFError, ValueError) as exc:
            raise WorkerUnreachable(
                f"fedsim worker daemon at {path} failed before replying ({exc}); see its log"
            ) from None
    return decode(reply, state)


def in_process(message: Message, context: Context) -> Message:
    """Today's path: fedsim's worker imported into this process (torch, data and model built here)."""
    from fedsim.engine.worker import client_app as worker

    return worker(message, context)


class ForwardingClientApp(ClientApp):
    """A ClientApp that hands every message, whatever its type, to fedsim's worker: the daemon the node config
    names, else the worker in this process. The worker's ClientApp alone knows the message types."""

    def __call__(self, message: Message, context: Context) -> Message:
        path = context.node_config.get(WORKER_KEY)
        if not path:
            return in_process(message, context)
        try:
            reply, after = call_worker(str(path), message, context)
        except WorkerUnreachable as exc:
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)), reply_to=message
            )
        context.state = after.state  # what the worker kept between messages (DIFF2's iterate, gossip's shard)
        return reply


client_app = ForwardingClientApp()
