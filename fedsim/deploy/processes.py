"""The processes a local deployment starts, owned in one place and stopped together, whatever happens.

Each process starts in a session of its own (its own process group) with its output in a log file, and carries
an environment marker (``FEDSIM_DEPLOY_ID``) that its children inherit. :meth:`Processes.stop` sends SIGTERM to
every group, then SIGKILL to what is left, and finally to any process still carrying the marker: Flower starts
some helpers (the SuperExec, the ServerApp) in sessions of their own, which escape their parent's group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from fedsim.errors import DeployError

MARKER = "FEDSIM_DEPLOY_ID"


def marked_processes(token: str) -> list[int]:
    """PIDs of the live processes whose environment carries ``FEDSIM_DEPLOY_ID=token`` (Linux; [] elsewhere)."""
    needle = f"{MARKER}={token}".encode()
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie is already dead; its parent reaps it
                    pids.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return pids


def last_lines(path: Path, n: int = 40) -> list[str]:
    """The last ``n`` non-empty lines of a log file, without terminal colour codes."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for code in ("\x1b[92m", "\x1b[91m", "\x1b[93m", "\x1b[0m", "\x1b[1m"):
        text = text.replace(code, "")
    return [line.strip() for line in text.splitlines() if line.strip()][-n:]


class Processes:
    """Start named processes with logs under ``log_dir``; stop all of them (and their helpers) on exit."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.token = uuid.uuid4().hex
        self.env = {**env, MARKER: self.token}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: Sequence[str], *, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session; stdout and stderr go to ``<log_dir>/<name>.log``."""
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=cwd, start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def exited(self, name: str) -> int | None:
        """The exit code of ``name``, or None while it runs."""
        return self.procs[name].poll()

    def failure(self, name: str, what: str) -> DeployError:
        """A one-line error for a process that exited: its most telling log line and where the log is."""
        lines = last_lines(self.log(name))
        telling = [l for l in lines if any(w in l.lower() for w in ("error", "failed", "refused", "in use"))]
        reason = (telling or lines or ["no output"])[-1]
        code = self.procs[name].poll()
        return DeployError(f"{what} exited with code {code}: {reason} (log: {self.log(name)})")

    def stop(self, *, grace_s: float = 5.0) -> None:
        """SIGTERM every process group (newest first), SIGKILL what is left after ``grace_s``, then any
        process that still carries this deployment's marker. Safe to call twice."""
        for proc in reversed(list(self.procs.values())):
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
                pass
        for _ in range(50):  # helpers in sessions of their own; children may appear while parents die
            left = marked_processes(self.token)
            if not left:
                break
            for pid in left:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.1)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the process started its own session: its group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (and SIGHUP) raise KeyboardInterrupt, so cleanup runs as for Ctrl-C."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
