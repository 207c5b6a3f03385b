"""The Ray cluster of one run: started, stopped and, if fedsim itself is killed, reaped as one unit.

Why this module exists: a run's Ray processes (gcs_server, raylet, log monitor, dashboard and runtime-env agents,
worker and actor processes) must neither die under the run while it stops at a safe point, nor outlive it.

- Signals. Ray starts every process it spawns with SIGINT blocked, so the terminal's Ctrl-C, which goes to the
  whole foreground process group, reaches only fedsim's handler (``fedsim.stopping``); the workers keep
  serving until the driver stops. ``ray.init`` runs here with SIGHUP blocked too, which its processes inherit,
  so a closed terminal's hang-up (also sent to the whole group) does not kill the cluster under the driver. ``ray.init`` however replaces the driver's SIGTERM handler with
  ``sys.exit``: :func:`ray_cluster` puts the previous handler back, and turns a SIGTERM that arrives while
  ``ray.init`` runs into a stop request instead of an exit from inside Ray.
- Start-up. Ray is started here, before Flower's simulation (Flower then uses the running cluster). ``ray.init``
  takes seconds and nothing of the run has happened yet, so a stop requested while it runs ends it at once
  (as Ray's own SIGTERM handler would) and the run stops before any actor or round; what ``ray.init`` had
  started is shut down and swept like at any other end.
- ``kill -9`` of fedsim. On Linux Ray ties gcs_server and raylet to the driver's main thread (PR_SET_PDEATHSIG),
  and workers exit seconds after their raylet, but the dashboard and runtime-env agents, children of the
  raylet, were seen alive 15 s and more after it (minutes, on a loaded machine). So each run gets a token
  (``FEDSIM_RAY_RUN=<driver pid>-<random>``, set in the driver's environment before ``ray.init``: Ray's processes
  inherit it) and its own Ray temp dir; the run's processes are those with the token in their environment or a
  file open under that temp dir (the agents overwrite their environment with their process title, but log
  there). A watchdog process, in its own session (no terminal signal reaches it), waits on a pipe from the
  driver: when the driver dies the pipe closes, and the watchdog SIGKILLs the run's processes and removes the
  temp dir. Only this user's processes can be read, and the token and temp dir are unique, so other runs' and
  other users' clusters are never touched. With ``engine.ray_address`` (an existing cluster) nothing is
  started, no watchdog runs, and only the driver's connection is closed.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsim.stopping import StopRequest

MARKER = "FEDSIM_RAY_RUN"
"""The environment variable every process of a run's own Ray cluster inherits: ``<driver pid>-<random hex>``."""

WATCH_POLL_S = 0.25
"""How often the watchdog also checks that its parent is the driver (a forked child may hold the pipe open)."""

REAP_WAIT_S = 5.0
"""How long a sweep keeps killing and waiting for this run's processes to be gone."""

LOCAL_SYSTEM_CONFIG = {"raylet_client_connect_timeout_milliseconds": 100, "raylet_client_num_connect_attempts": 100}
"""Ray settings of a cluster started here: a client of a Ray socket not yet listening retries every 0.1 s instead of
every 1 s, 100 times (the same 10 s in all as Ray's default of 10 tries). The raylet connects to the object store it
has just started in another thread: in some starts the store was not listening yet, and the 1 s wait that followed
made ``ray.init`` 1 s slower (``bench/population_scale.py --backend ray --repeat N``: two groups of start-ups)."""


def run_token(pid: int | None = None) -> str:
    """A token unique to one run: the driver's pid (so a test or a user can find the run's processes) and a
    random part (so a recycled pid never names another run)."""
    return f"{os.getpid() if pid is None else pid}-{secrets.token_hex(6)}"


def _uses_dir(pid: str, temp_dir: str) -> bool:
    """Whether the process has its working directory or an open file under ``temp_dir``."""
    inside = (temp_dir, temp_dir + os.sep)
    try:
        links = [os.readlink(f"/proc/{pid}/cwd")]
        links += (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
        return any(link == inside[0] or link.startswith(inside[1]) for link in links)
    except OSError:  # gone, or not ours
        return False


def run_processes(
    token: str, temp_dir: str, *, exclude: set[int] | frozenset[int] = frozenset()
) -> list[int]:
    """The live (not zombie) processes of this run's Ray cluster: those whose environment holds
    ``FEDSIM_RAY_RUN=<token>``, and those with a file open in its temp dir (Ray's agents rename themselves
    over their environment, but log into the session dir).

    Reads /proc (Linux), where another user's processes cannot be read and are therefore never listed."""
    needle = b"\0" + f"{MARKER}={token}".encode() + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = b"\0" + f.read() + b"\0"
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone, or not ours
            continue
        if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"Z":
            continue
        if needle in env or (temp_dir and _uses_dir(name, temp_dir)):
            found.append(int(name))
    return found


def kill_run(
    token: str,
    temp_dir: str,
    *,
    exclude: set[int] | frozenset[int] = frozenset(),
    wait_s: float = REAP_WAIT_S,
) -> list[int]:
    """SIGKILL this run's processes until none is left (or ``wait_s`` passed); returns the pids it killed."""
    if not sys.platform.startswith("linux"):
        return []
    killed: list[int] = []
    deadline = time.monotonic() + wait_s
    while pids := run_processes(token, temp_dir, exclude=exclude):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return sorted(set(killed))


def kill_workers(token: str) -> list[int]:
    """SIGKILL this run's Ray worker processes (actors included; not gcs_server, raylet or the agents), so
    that tasks in flight fail at once instead of finishing: for a run that stops and no longer needs them."""
    if not sys.platform.startswith("linux"):
        return []
    killed = []
    for pid in run_processes(token, temp_dir=""):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(b"ray::"):
                    continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (OSError, ProcessLookupError):
            pass
    return killed


class RayCluster:
    """What :func:`ray_cluster` yields: whether the cluster is this run's own, and a way to end its tasks."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def end_tasks(self) -> list[int]:
        """Kill the workers of this run's own cluster (nothing on an existing cluster): tasks in flight fail
        with ActorDiedError now instead of finishing."""
        return kill_workers(self.token) if self.token else []


def start_watchdog(token: str, temp_dir: str) -> subprocess.Popen[bytes] | None:
    """The watchdog of this run (Linux only: elsewhere Ray's own reaper process does its part)."""
    if not sys.platform.startswith("linux"):
        return None
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim.engine.ray_guard", str(os.getpid()), token, temp_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # no terminal signal (Ctrl-C, hang-up) reaches it
    )


def stop_watchdog(proc: subprocess.Popen[bytes] | None) -> None:
    """Tell the watchdog the driver cleaned up itself, and let it exit."""
    if proc is None or proc.stdin is None:
        return
    try:
        proc.stdin.write(b"done\n")
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def watch(parent: int, token: str, temp_dir: str) -> None:
    """The watchdog's loop: return on ``done`` from the driver; on end of file (the driver died) or a new
    parent, kill this run's processes and remove its temp dir."""
    while True:
        ready, _, _ = select.select([0], [], [], WATCH_POLL_S)
        if ready:
            data = os.read(0, 64)
            if data.startswith(b"done"):
                return
            if not data:
                break
        if os.getppid() != parent:
            break
    kill_run(token, temp_dir, exclude={os.getpid()})
    shutil.rmtree(temp_dir, ignore_errors=True)


def ray_temp_root() -> str:
    """Where Ray would put its temp dir (``RAY_TMPDIR``, else /tmp: its socket paths must stay short)."""
    return os.environ.get("RAY_TMPDIR") or ("/tmp" if os.name == "posix" else tempfile.gettempdir())


@contextmanager
def _environ(updates: Mapping[str, str]) -> Iterator[None]:
    previous = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _StartAborted(BaseException):
    """A stop was requested while ``ray.init`` ran: leave it (what it started is shut down by the caller)."""


def _init_ray(init_args: Mapping[str, Any], stop: StopRequest | None) -> None:
    """``ray.init``, which a stop request ends early (it is a safe point: nothing has run yet), with the
    driver's signal handlers kept (Ray replaces the SIGTERM one with ``sys.exit``)."""
    import ray

    from fedsim.stopping import HANDLED

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in HANDLED} if main else {}

    def abort(signum: int, frame: FrameType | None) -> None:
        if stop is None or stop:  # a second signal: the user insists (as fedsim.stopping does)
            raise KeyboardInterrupt
        stop.set(signal.Signals(signum).name)
        raise _StartAborted

    # Ray's processes inherit the signal mask of the thread that starts them: with SIGHUP blocked, like SIGINT
    # by Ray itself, a closed terminal's hang-up (sent to the whole process group) reaches only the driver.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP}) if hasattr(signal, "SIGHUP") else None
    try:
        if main and stop is not None:
            for s in HANDLED:
                signal.signal(s, abort)
        ray.init(**init_args)
    except _StartAborted:
        pass
    except SystemExit as exc:  # Ray's own SIGTERM handler, installed by ray.init, fired
        if stop is None or exc.code != signal.SIGTERM:
            raise
        stop.set("SIGTERM")
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)


CONNECT_TIMEOUT_S = 5.0
"""How long :func:`check_reachable` waits for the head of an existing cluster to accept a connection."""


def check_reachable(address: str, *, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse at once an ``engine.ray_address`` of the form ``host:port`` where nothing accepts a connection:
    ``ray.init`` would retry it for minutes, printing a warning every few seconds. Other forms (``auto``,
    ``ray://...``) are left to Ray.

    Raises:
        ConfigError: nothing answered at ``address``.
    """
    from fedsim.errors import ConfigError

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            "engine.ray_address", f"the host:port of a running Ray cluster's head ({reason} there)", address
        ) from None


@contextmanager
def ray_cluster(init_args: Mapping[str, Any], stop: StopRequest | None = None) -> Iterator[RayCluster]:
    """Ray for one run: started (or connected, with ``address``) on entry; shut down, and anything of it that
    is left killed, on exit, however the block ends.

    ``init_args`` are ``ray.init`` arguments (:func:`fedsim.engine.simulation.backend_config`'s ``init_args``).
    The driver's ``sys.path`` reaches the workers as ``PYTHONPATH``, as with Flower's own start of Ray: a cluster
    started here inherits it from this process's environment; on an existing cluster it goes in the job's runtime
    environment. A local cluster is given no runtime environment on purpose: with one, Ray starts every actor's
    process through its runtime-env agent and a second exec, instead of handing it a worker it started already."""
    import ray

    if ray.is_initialized():  # someone else's Ray in this process: Flower uses it and shuts it down as before
        yield RayCluster(None)
        return
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    if init_args.get("address"):  # an existing cluster: only our connection to it is ours
        check_reachable(init_args["address"])
        with _environ({"PYTHONPATH": pythonpath}):
            try:
                _init_ray({**init_args, "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}, stop)
                yield RayCluster(None)
            finally:
                ray.shutdown()
        return

    token = run_token()
    temp_dir = tempfile.mkdtemp(prefix=f"fedsim-ray-{os.getpid()}-", dir=ray_temp_root())
    watchdog = start_watchdog(token, temp_dir)
    try:
        with _environ({MARKER: token, "PYTHONPATH": pythonpath}):
            try:
                _init_ray({**init_args, "_temp_dir": temp_dir, "_system_config": LOCAL_SYSTEM_CONFIG}, stop)
                yield RayCluster(token)
            finally:
                ray.shutdown()
                kill_run(token, temp_dir, exclude={os.getpid()} | ({watchdog.pid} if watchdog else set()))
    finally:
        stop_watchdog(watchdog)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":  # the watchdog: python -m fedsim.engine.ray_guard <driver pid> <token> <temp dir>
    watch(int(sys.argv[1]), sys.argv[2], sys.argv[3])
