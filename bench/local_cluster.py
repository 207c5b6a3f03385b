"""A Ray cluster of several raylets on this machine, for the multi-node test and ``bench/cluster_scale.py``.

Started the way a real cluster is (``ray start --head`` then ``ray start --address=<head>`` per extra node), with
the venv's own ``ray`` executable, every port chosen free and one temp dir per cluster, so it never collides
with another Ray on the machine. Stopped as one unit, never with a bare ``ray stop`` (which stops every Ray
of this user on the machine): each ``ray start`` runs with ``FEDSIM_RAY_RUN=<token>`` in its environment, which
the cluster's processes inherit, and :func:`fedsim.engine.ray_guard.kill_run` kills exactly the processes with
that token or with a file open in the cluster's temp dir (Ray's agents rename themselves over their environment,
but log there).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.engine.ray_guard import MARKER, kill_run, ray_temp_root, run_token

RAY = Path(sys.executable).with_name("ray")
"""The venv's ``ray`` executable (the same Ray as the driver's)."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free now on 127.0.0.1 (held open together, so no two are the same)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalCluster:
    """A running local cluster: its head's address, temp dir and the token its processes carry."""

    address: str
    temp_dir: str
    token: str
    nodes: int


def _node_args(ports: list[int]) -> list[str]:
    """The ports one raylet listens on, all chosen free (Ray's fixed defaults would collide between raylets)."""
    names = (
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
    )
    return [f"{name}={port}" for name, port in zip(names, ports, strict=True)]


def _ray_start(args: list[str], env: Mapping[str, str], timeout_s: float) -> None:
    out = subprocess.run(
        [str(RAY), "start", *args], env=dict(env), capture_output=True, text=True, timeout=timeout_s
    )
    if out.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


@contextmanager
def local_cluster(
    nodes: int = 2,
    *,
    cpus_per_node: int = 1,
    env: Mapping[str, str] | None = None,
    node_env: Sequence[Mapping[str, str]] = (),
    timeout_s: float = 60.0,
) -> Iterator[LocalCluster]:
    """``nodes`` raylets on this machine (the first one the head), ``cpus_per_node`` CPUs each; stopped and
    swept on exit however the block ends. ``env``: extra environment of every raylet (and so of its workers);
    ``node_env[i]``: of raylet ``i`` only (e.g. its own ``FEDSIM_CACHE_DIR``, as separate machines have)."""
    token = run_token()
    temp_dir = tempfile.mkdtemp(prefix=f"fedsim-cluster-{os.getpid()}-", dir=ray_temp_root())
    base = {**os.environ, **(env or {}), MARKER: token, "RAY_USAGE_STATS_ENABLED": "0"}
    base.pop("RAY_ADDRESS", None)

    def node(i: int) -> dict[str, str]:
        return {**base, **(node_env[i] if i < len(node_env) else {})}

    gcs, client, dashboard, *head_ports = free_ports(9)
    address = f"127.0.0.1:{gcs}"
    common = [f"--num-cpus={cpus_per_node}", "--num-gpus=0", "--disable-usage-stats"]
    try:
        head = [
            "--head",
            f"--port={gcs}",
            f"--ray-client-server-port={client}",
            f"--dashboard-port={dashboard}",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
        ]
        _ray_start(
            [*head, "--node-ip-address=127.0.0.1", *common, *_node_args(head_ports)], node(0), timeout_s
        )
        for i in range(1, nodes):
            joining = [
                f"--address={address}",
                "--node-ip-address=127.0.0.1",
                *common,
                *_node_args(free_ports(6)),
            ]
            _ray_start(joining, node(i), timeout_s)
        query(address, f"wait_for_nodes({nodes}, {timeout_s})", timeout_s)
        yield LocalCluster(address=address, temp_dir=temp_dir, token=token, nodes=nodes)
    finally:
        kill_run(token, temp_dir, exclude={os.getpid()})
        shutil.rmtree(temp_dir, ignore_errors=True)


_QUERIES = """
import json, sys, time
import ray
from ray._private import state

def wait_for_nodes(n, timeout_s):
    deadline = time.monotonic() + timeout_s
    while sum(node["Alive"] for node in ray.nodes()) < n:
        if time.monotonic() > deadline:
            sys.exit(f"only {sum(node['Alive'] for node in ray.nodes())} of {n} nodes registered")
        time.sleep(0.2)
    return n

def nodes():
    return sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])

def actors(class_name):
    # the GCS keeps the actors of finished jobs: where each of the class ran
    found = state.actors()
    return sorted(
        [a["Address"]["NodeID"], a["Pid"]] for a in found.values() if a["ActorClassName"].endswith(class_name)
    )
"""


def query(address: str, expression: str, timeout_s: float = 60.0) -> Any:
    """Evaluate one of :data:`_QUERIES`' functions in a driver connected to the cluster (a separate process,
    so the caller's own process never starts or joins Ray); returns its JSON result."""
    code = (
        _QUERIES
        + f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
        + f"print(json.dumps({expression}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s + 30)
    if out.returncode != 0:
        raise RuntimeError(f"cluster at {address}: {expression}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
