"""A warm fedsim worker for one SuperNode: a long-lived process that imports torch and fedsim once and keeps the
run's data and model cached across messages (``fedsim.engine.worker`` caches per process), serving the light
ClientApp of ``fedsim.deploy.forward`` over a Unix socket.

    python -m fedsim.deploy.warm_worker --socket /run/fedsim/worker.sock

The socket lives in a private directory (made with mode 0700 when missing; an existing one that others may enter
is refused) and is itself mode 0600, so only this user's processes can hand it work. Point the SuperNode at it
with ``--node-config '... fedsim-worker="/run/fedsim/worker.sock"'``. Messages are served one at a time, as a
SuperNode sends them. A message the worker fails on is answered with a Flower Error (as ``flwr-clientapp`` does)
and the daemon keeps serving. SIGTERM or SIGINT stops it and removes the socket.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from fedsim.deploy.forward import decode, encode, recv_frames, send_frames
from fedsim.errors import ConfigError

log = logging.getLogger("fedsim.warm_worker")

Handler = Callable[[Message, Context], Message]


def private_socket_dir(path: Path) -> None:
    """Make the socket's directory (mode 0700) or check that an existing one is this user's alone.

    Raises:
        ConfigError: the directory is another user's or open to group/others.
    """
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            "--socket", f"a path in a directory only this user can enter (chmod 700 {folder})", str(path)
        )


@contextmanager
def listening(path: Path) -> Iterator[socket.socket]:
    """A Unix socket listening at ``path`` (mode 0600); removed again on exit. A stale socket file (nothing
    listens) is replaced; a live one is refused."""
    private_socket_dir(path)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError("--socket", "a path that is free or an old socket", f"{path} (another file)")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a daemon that died
            else:
                raise ConfigError("--socket", "a path no other worker daemon listens on", str(path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600: no window in which others may connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    try:
        os.chmod(path, 0o600)
        sock.listen(8)
        yield sock
    finally:
        sock.close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def answer(handler: Handler, message_bytes: bytes, context_bytes: bytes) -> tuple[bytes, bytes]:
    """One request: decode, run ``handler``, encode the reply and the Context after it. An exception becomes an
    Error reply (the reason as ``flwr-clientapp`` writes it) and the Context goes back unchanged."""
    message, context = decode(message_bytes, context_bytes)
    try:
        reply = handler(message, context)
    except Exception as ex:  # noqa: BLE001 - every failure is the message's, not the daemon's
        log.exception("the worker raised on a %s message", message.metadata.message_type)
        reason = str(type(ex)) + ":<'" + str(ex) + "'>"
        reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        return encode(reply, context)[0], context_bytes
    return encode(reply, context)


def serve(sock: socket.socket, handler: Handler, *, requests: int | None = None) -> None:
    """Answer connections one at a time (``requests``: stop after that many; None: until the listening socket is
    shut down). A client that goes away mid-request costs only its own connection."""
    served = 0
    while requests is None or served < requests:
        try:
            conn, _ = sock.accept()
        except OSError:  # shut down (or closed) by whoever owns it
            return
        with conn:
            try:
                if not conn.recv(1, socket.MSG_PEEK):  # connected and closed: a probe that it listens
                    continue
                message_bytes, context_bytes = recv_frames(conn, 2)
                send_frames(conn, *answer(handler, message_bytes, context_bytes))
            except (OSError, EOFError, ValueError) as exc:
                log.warning("dropped a connection: %s", exc)
        served += 1


def worker_handler() -> Handler:
    """fedsim's worker ClientApp (imports torch and fedsim.engine now, once)."""
    from fedsim.engine.worker import client_app

    return client_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedsim.deploy.warm_worker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--socket", required=True, type=Path, help="the Unix socket to listen on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        handler = worker_handler()
        with listening(args.socket) as sock:
            print(f"fedsim worker daemon: listening on {args.socket}", flush=True)
            serve(sock, handler)
    except ConfigError as exc:
        print(f"fedsim worker daemon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
