"""End to end on loopback: a real SuperLink and real SuperNodes with TLS and SuperNode authentication.

The results of a deployed run are checked against the simulation engine on the same scenario (an in-process
Grid: the path tests/engine covers), so deployment changes where clients train, not what they compute.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from deploy_helpers import ROOT, TINY, fedsim, live_processes_with_env

from fedsim.deploy.commands import SuperLinkAddress, superlink_command, supernode_command
from fedsim.deploy.local import HOST, free_port, wait_listening
from fedsim.deploy.pki import make_node_key, make_server_certificates
from fedsim.deploy.processes import Processes, last_lines
from fedsim.deploy.register import register_key
from fedsim.deploy.submit import CONNECTION, deployment_env, write_connection

pytestmark = pytest.mark.slow


def simulated_rows(scenario_path):
    """The same scenario through the engine and fedsim's worker in this process (tests/engine/local_grid.py)."""
    sys.path.insert(0, str(ROOT / "tests" / "engine"))
    from flwr.supercore.task_identity import TaskIdentity
    from local_grid import LocalGrid, MemoryRecorder

    from fedsim.engine.server import Engine
    from fedsim.scenario import load_scenario

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        rec = MemoryRecorder()
        Engine(load_scenario(scenario_path), rec, expected_workers=1).run(LocalGrid([1]))
        return rec.rows
    finally:
        TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def test_fedsim_deploy_local_runs_rounds_over_tls_with_authenticated_supernodes(tmp_path):
    mark = uuid.uuid4().hex
    t0 = time.monotonic()
    out = fedsim(
        "deploy",
        str(TINY),
        "--local",
        "2",
        "-o",
        str(tmp_path),
        "-q",
        env={"FEDSIM_TEST_MARK": mark},
        timeout=480,
    )
    wall = time.monotonic() - t0
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert out.stdout.startswith("done: rounds=2 test_accuracy=")
    (run_dir,) = (tmp_path / "deploy-tiny").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["clients"] == 2 and r["dropped"] == 0 for r in rows)
    assert rows[1]["test_accuracy"] > rows[0]["test_accuracy"]  # the accuracy rises
    for deployed, simulated in zip(rows, simulated_rows(TINY), strict=True):
        assert deployed["test_accuracy"] == pytest.approx(simulated["test_accuracy"], abs=1e-6)
    for name in (
        "report.md",
        "model.pt",
        "scenario.yaml",
        "deploy/certs/ca.pem",
        "deploy/keys/supernode-1.pub",
    ):
        assert (run_dir / name).is_file(), name
    logs = run_dir / "deploy" / "logs"
    superlink = "\n".join(last_lines(logs / "superlink.log", 10_000))
    assert "Uvicorn running on https://127.0.0.1:" in superlink  # TLS on
    assert "SuperNode authentication is disabled" not in superlink and "--insecure" not in superlink
    for i in range(2):
        assert any("SuperNode ID:" in l for l in last_lines(logs / f"supernode-{i}.log", 10_000))
        # each SuperNode's ClientApps forwarded to its warm worker daemon, whose socket went with it
        (listening,) = [l for l in last_lines(logs / f"worker-{i}.log") if "listening on" in l]
        socket_path = Path(listening.rsplit(" ", 1)[1])
        assert socket_path.name == f"worker-{i}.sock" and not socket_path.parent.exists()
        assert not any("WARNING" in l or "ERROR" in l for l in last_lines(logs / f"worker-{i}.log"))
    assert live_processes_with_env("FEDSIM_TEST_MARK", mark) == []
    print(f"fedsim deploy --local 2, 2 rounds: {wall:.1f} s wall")


def test_a_supernode_whose_key_is_not_registered_is_refused(tmp_path):
    certs = make_server_certificates(tmp_path / "certs")
    known, stranger = make_node_key(tmp_path / "keys", "known"), make_node_key(tmp_path / "keys", "stranger")
    address = SuperLinkAddress(HOST, free_port())
    write_connection(tmp_path / "home", address, certs.ca_cert)
    procs = Processes(tmp_path / "logs", deployment_env(tmp_path / "home"))
    node = dict(superlink=address, num_partitions=2, ca_cert=certs.ca_cert)
    try:
        procs.start("superlink", superlink_command(host=HOST, port=address.port, certs=certs))
        wait_listening(procs, "superlink", HOST, address.port, timeout_s=60)
        register_key(known.public, connection=CONNECTION, env=procs.env, cwd=tmp_path)
        procs.start(
            "known",
            supernode_command(**node, partition_id=0, runtime_port=free_port(), private_key=known.private),
        )
        procs.start(
            "stranger",
            supernode_command(**node, partition_id=1, runtime_port=free_port(), private_key=stranger.private),
        )
        code = procs.procs["stranger"].wait(timeout=60)  # refused: it exits, it does not hang
        assert code != 0
        assert any("Failed to activate SuperNode" in l for l in last_lines(procs.log("stranger")))
        deadline = time.monotonic() + 30
        while (
            not any("SuperNode ID:" in l for l in last_lines(procs.log("known")))
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert procs.exited("known") is None and any(
            "SuperNode ID:" in l for l in last_lines(procs.log("known"))
        )
        refusals = [l for l in last_lines(procs.log("superlink"), 10_000) if "activate-node" in l]
        assert any("No SuperNode found with the given public key" in l for l in refusals)
    finally:
        procs.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_fedsim_deploy_stops_every_process_it_started(tmp_path, sig):
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "deploy", str(TINY), "--local", "2", "-o", str(tmp_path), "-q"],
        cwd=ROOT, env={**__import__("os").environ, "FEDSIM_TEST_MARK": mark},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as from a terminal: a test run started in the background by a non-interactive shell inherits SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(tmp_path.glob("*/*/deploy/logs/flwr-run.log")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        time.sleep(2)  # the run is being submitted: SuperLink, SuperNodes and flwr run are all up
        assert len(live_processes_with_env("FEDSIM_TEST_MARK", mark)) >= 5
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err  # the exit code of an interrupted command
    deadline = time.monotonic() + 10
    while live_processes_with_env("FEDSIM_TEST_MARK", mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_processes_with_env("FEDSIM_TEST_MARK", mark) == []


def test_fedbuff_runs_on_real_supernodes_step_by_arriving_reply(tmp_path):
    """The asynchronous path on the Deployment Runtime: each reply that arrives is a server step (c = 1). Without
    the warm worker: the ClientApp process Flower starts per message runs fedsim's worker itself (a device with
    no daemon)."""
    out = fedsim(
        "deploy", str(ROOT / "tests" / "deploy" / "fedbuff.yaml"), "--local", "2", "-o", str(tmp_path), "-q",
        "--no-warm-worker", timeout=480,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    (run_dir,) = (tmp_path / "deploy-fedbuff").iterdir()
    assert not list((run_dir / "deploy" / "logs").glob("worker-*.log"))  # no daemon was started
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["clients"], r["dropped"]) for r in rows] == [(n, 1, 0) for n in (1, 2, 3, 4)], rows
    times = [r["virtual_time_s"] for r in rows]
    assert times == sorted(times)
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
