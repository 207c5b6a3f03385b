"""``fedsim deploy SCENARIO --local N``: a real SuperLink and N real SuperNodes on this machine, one run, then
every process stopped again (also on Ctrl-C, SIGTERM or failure).

TLS is on with certificates made into the results folder (``deploy/certs``), and SuperNode authentication is on:
each SuperNode gets a key pair (``deploy/keys``) whose public key is registered with ``flwr supernode register``
before it starts. SuperNode ``i`` owns logical client ``i`` (``--node-config "partition-id=i
num-partitions=<population>"``). The ServerApp writes the usual results folder; Flower's logs go to
``deploy/logs``.

Each SuperNode also gets a warm worker daemon (``fedsim.deploy.warm_worker``, log ``worker-<i>.log``) whose
socket, in a private temporary directory, its node config names: the ClientApp process Flower starts per message
then forwards the message to it instead of importing torch and rebuilding data and model
(``warm_worker=False``: ``--no-warm-worker``, every message handled in its ClientApp process as before).
"""

from __future__ import annotations

import errno
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from fedsim.deploy.commands import (
    SuperLinkAddress,
    superlink_command,
    supernode_command,
    warm_worker_command,
)
from fedsim.deploy.pki import (
    ServerCertificates,
    check_server_certificates,
    make_node_key,
    make_server_certificates,
)
from fedsim.deploy.processes import Processes, terminate_as_interrupt
from fedsim.deploy.register import register_key
from fedsim.deploy.submit import (
    CONNECTION,
    FollowedRun,
    deployment_env,
    find_app_dir,
    run_failure,
    submit_and_follow,
    write_connection,
    write_run_config,
)
from fedsim.engine.rounds import RunSummary
from fedsim.errors import ConfigError, DeployError
from fedsim.report import write_report
from fedsim.results import RunDir, new_run_dir, read_metrics
from fedsim.run import ProgressDisplay, RunOutcome
from fedsim.scenario import Scenario

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ensure_free(host: str, port: int) -> None:
    """Raises DeployError when ``host:port`` cannot be bound (in use, or not an address of this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            why = (
                "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            )
            raise DeployError(f"flower-superlink cannot start: {host}:{port} {why} (--port)") from None


def wait_listening(procs: Processes, name: str, host: str, port: int, *, timeout_s: float) -> None:
    """Wait until the process ``name`` accepts connections on ``host:port``.

    Raises:
        DeployError: it exited first (with its most telling log line) or missed the deadline.
    """

    def connect() -> None:
        with socket.create_connection((host, port), timeout=0.5):
            pass

    _wait_accepting(procs, name, "flower-superlink", f"{host}:{port}", connect, timeout_s=timeout_s)


def wait_socket(procs: Processes, name: str, path: Path, *, timeout_s: float) -> None:
    """Wait until the worker daemon ``name`` listens on its Unix socket ``path``.

    Raises:
        DeployError: it exited first (with its most telling log line) or missed the deadline.
    """

    def connect() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))

    _wait_accepting(procs, name, "fedsim worker daemon", str(path), connect, timeout_s=timeout_s)


def _wait_accepting(
    procs: Processes, name: str, what: str, where: str, connect: Callable[[], None], *, timeout_s: float
) -> None:
    """Poll ``connect`` until it succeeds; fail when ``name`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if procs.exited(name) is not None:
            raise procs.failure(name, what)
        try:
            connect()
            return
        except OSError:
            time.sleep(0.1)
    raise DeployError(f"{what} did not listen on {where} within {timeout_s:g} s (log: {procs.log(name)})")


def user_certificates(folder: Path) -> ServerCertificates:
    """``--certs DIR``: an existing ``ca.pem``, ``server.pem`` and ``server.key``, checked before anything starts."""
    certs = ServerCertificates(
        ca_cert=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key"
    )
    check_server_certificates(certs)
    return certs


def deploy_local(
    scenario: Scenario,
    *,
    nodes: int,
    insecure: bool = False,
    certs_dir: Path | None = None,
    port: int | None = None,
    output_root: str | Path | None = None,
    show_progress: bool = True,
    warm_worker: bool = True,
) -> RunOutcome:
    """Run ``scenario`` on a SuperLink and ``nodes`` SuperNodes started here; stop them all before returning.

    ``warm_worker``: each SuperNode's ClientApps forward to a worker daemon of its own (started here too).

    Raises:
        ConfigError: bad options (checked before anything starts).
        DeployError: a process failed to start, or the run did not finish (finished rounds stay on disk).
    """
    population = scenario.population.clients
    if not 1 <= nodes <= population:
        raise ConfigError(
            "--local", f"a number of SuperNodes between 1 and population.clients ({population})", nodes
        )
    if insecure and certs_dir is not None:
        raise ConfigError("--certs", "left out with --insecure (no TLS)", str(certs_dir))
    app = find_app_dir()
    given = user_certificates(certs_dir) if certs_dir is not None else None
    port = port or free_port()
    ensure_free(HOST, port)

    t0 = time.monotonic()
    path = new_run_dir(scenario, root=output_root)
    RunDir(path, scenario).close()  # scenario.yaml now; the ServerApp appends the rounds
    deploy_dir = path / "deploy"
    certs = keys = None
    if not insecure:  # Flower allows SuperNode authentication only over TLS
        certs = given or make_server_certificates(deploy_dir / "certs", hosts=(HOST, "localhost"))
        keys = [make_node_key(deploy_dir / "keys", f"supernode-{i}") for i in range(nodes)]
    address = SuperLinkAddress(HOST, port)
    write_connection(deploy_dir / "flwr-home", address, None if certs is None else certs.ca_cert)
    procs = Processes(deploy_dir / "logs", deployment_env(deploy_dir / "flwr-home"))
    # Unix socket paths are short (about 100 bytes): a private (0700) temporary directory, not the results folder
    sockets_dir = Path(tempfile.mkdtemp(prefix="fedsim-workers-")) if warm_worker else None
    sockets = [sockets_dir / f"worker-{i}.sock" for i in range(nodes)] if sockets_dir else []
    console = Console(file=sys.stderr, quiet=not show_progress)

    def check(run: FollowedRun) -> None:
        if procs.exited("superlink") is not None:
            raise procs.failure("superlink", "flower-superlink")
        for i in range(nodes):  # before round 1 a SuperNode that exits is a setup error; later, a dropout
            if not run.rows and procs.exited(f"supernode-{i}") is not None:
                raise procs.failure(f"supernode-{i}", f"flower-supernode {i}")
            if sockets and not run.rows and procs.exited(f"worker-{i}") is not None:
                raise procs.failure(f"worker-{i}", f"fedsim worker daemon {i}")

    try:
        with terminate_as_interrupt():
            for i, path_i in enumerate(sockets):  # they import torch while the SuperLink starts
                procs.start(f"worker-{i}", warm_worker_command(path_i))
            procs.start(
                "superlink", superlink_command(host=HOST, port=port, certs=certs, node_auth=certs is not None)
            )
            wait_listening(procs, "superlink", HOST, port, timeout_s=START_TIMEOUT_S)
            for key in keys or []:
                register_key(key.public, connection=CONNECTION, env=procs.env, cwd=deploy_dir)
            for i in range(nodes):
                cmd = supernode_command(
                    superlink=address, partition_id=i, num_partitions=population, runtime_port=free_port(),
                    ca_cert=None if certs is None else certs.ca_cert,
                    private_key=None if keys is None else keys[i].private,
                    worker_socket=sockets[i] if sockets else None,
                )  # fmt: skip
                procs.start(f"supernode-{i}", cmd)
            for i, path_i in enumerate(sockets):  # before the run exists, so before any message comes
                wait_socket(procs, f"worker-{i}", path_i, timeout_s=START_TIMEOUT_S)
            run_config = write_run_config(
                deploy_dir / "run-config.toml",
                scenario,
                placement="partition",
                expected_workers=nodes,
                run_dir=path,
            )
            with ProgressDisplay(console, scenario) as display:
                run = submit_and_follow(
                    procs, app_dir=app, run_config=run_config, on_row=display, check=check
                )
    finally:
        procs.stop()
        if sockets_dir is not None:
            shutil.rmtree(sockets_dir, ignore_errors=True)
        rows = read_metrics(path / "metrics.jsonl")
        if rows and not (path / "report.md").exists():  # stopped mid-run: report the finished rounds
            write_report(path, scenario, rows, wall_s=time.monotonic() - t0)
    if not run.finished(len(rows)):
        raise run_failure(procs, "flwr-run", FollowedRun(rows=rows), scenario)
    return RunOutcome(
        path=path,
        summary=RunSummary(rounds=len(rows), last_row=rows[-1]),
        wall_s=time.monotonic() - t0,
        scenario=scenario,
        rows=rows,
    )
