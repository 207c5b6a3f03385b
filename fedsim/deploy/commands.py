"""The Flower 1.42 command lines of a deployment, built in one place.

``fedsim deploy --local``, the Docker compose file and docs/deployment.md use these same commands, and the tests
run them as processes. Flower 1.42 serves the SuperLink's Fleet, Control and Runtime APIs over HTTPS on ONE port
(``--host``/``--port``); the separate gRPC ports of older docs (9091-9093) no longer apply. A SuperNode also
serves a local Runtime API for its ClientApp processes on its own ``--port`` (default 9094), so SuperNodes that
share a machine need distinct ports.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from fedsim.deploy.forward import WORKER_KEY
from fedsim.deploy.pki import ServerCertificates

# Runs must not `uv sync` the app's dependencies into a fresh environment per run (Flower's default): the
# environment that runs the SuperLink/SuperNode already has fedsim, and the machines may have no network.
NO_DEPENDENCY_INSTALL_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


@dataclass(frozen=True)
class SuperLinkAddress:
    """Where SuperNodes and the ``flwr`` CLI reach the SuperLink."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def superlink_command(
    *,
    host: str,
    port: int,
    certs: ServerCertificates | None,
    node_auth: bool = True,
    isolation: str = "subprocess",
) -> list[str]:
    """``flower-superlink``: TLS with ``certs`` (None: ``--insecure``), SuperNode authentication on by default.

    ``isolation="process"``: the ServerApp runs in a separate SuperExec (a container of its own in Docker).
    """
    cmd = ["flower-superlink", "--host", host, "--port", str(port), "--isolation", isolation]
    if certs is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.cert)]
        cmd += ["--ssl-keyfile", str(certs.key)]
    if node_auth:
        cmd.append("--enable-supernode-auth")
    cmd.append("--disable-runtime-dependency-installation")
    return cmd


def supernode_command(
    *,
    superlink: SuperLinkAddress,
    partition_id: int,
    num_partitions: int,
    runtime_port: int,
    ca_cert: Path | None,
    private_key: Path | None,
    isolation: str = "subprocess",
    runtime_host: str = "127.0.0.1",
    worker_socket: Path | None = None,
) -> list[str]:
    """``flower-supernode`` for the device that owns logical client ``partition_id`` of ``num_partitions``.

    ``ca_cert`` None: ``--insecure``. ``private_key``: the node's authentication key (OpenSSH, P-384).
    ``worker_socket``: the warm worker daemon its ClientApps hand messages to (``fedsim.deploy.forward``).
    """
    cmd = ["flower-supernode", "--superlink", str(superlink)]
    cmd += ["--insecure"] if ca_cert is None else ["--root-certificates", str(ca_cert)]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
    if worker_socket is not None:
        node_config += f' {WORKER_KEY}="{worker_socket}"'
    cmd += ["--node-config", node_config]
    cmd += ["--host", runtime_host, "--port", str(runtime_port), "--isolation", isolation]
    return cmd


def warm_worker_command(socket_path: Path) -> list[str]:
    """The warm fedsim worker of one SuperNode (``fedsim.deploy.warm_worker``), listening on ``socket_path``."""
    return [sys.executable, "-m", "fedsim.deploy.warm_worker", "--socket", str(socket_path)]


def superexec_command(
    *, runtime_address: str, insecure: bool = True, ca_cert: Path | None = None
) -> list[str]:
    """``flower-superexec`` (process isolation): runs the ServerApp or a ClientApp for a SuperLink/SuperNode."""
    cmd = ["flower-superexec", "--runtime-api-address", runtime_address]
    return cmd + (["--insecure"] if insecure else ["--root-certificates", str(ca_cert)])


def register_command(public_key: Path, connection: str) -> list[str]:
    """``flwr supernode register``: allow the SuperNode holding this key pair to connect."""
    return ["flwr", "supernode", "register", str(public_key), connection, "--format", "json"]


def run_command(app: Path, connection: str, run_config: Path) -> list[str]:
    """``flwr run``: submit the app (built into a FAB from ``app``) and stream the run's log until it ends."""
    return ["flwr", "run", str(app), connection, "--stream", "--run-config", str(run_config)]


def connection_toml(name: str, address: SuperLinkAddress | str, ca_cert: Path | None) -> str:
    """The ``$FLWR_HOME/config.toml`` that names one SuperLink connection for the ``flwr`` CLI."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines.append(f'root-certificates = "{ca_cert}"' if ca_cert is not None else "insecure = true")
    return "\n".join(lines) + "\n"
