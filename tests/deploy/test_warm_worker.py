"""The deployed ClientApp (``fedsim.deploy.forward``) and the warm worker daemon (``fedsim.deploy.warm_worker``),
without a SuperLink: the engine over an in-process Grid whose nodes run the forwarder, with the daemon served from
a thread of this process. tests/deploy/test_deploy_e2e.py runs the daemon as a process under real SuperNodes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from deploy_helpers import ROOT, TINY
from flwr.app import Context, Message, RecordDict
from flwr.common.config import parse_config_args
from flwr.common.constant import ErrorCode

from fedsim.deploy.commands import SuperLinkAddress, supernode_command
from fedsim.deploy.forward import WORKER_KEY, call_worker, client_app
from fedsim.deploy.warm_worker import listening, serve, worker_handler
from fedsim.engine.inprocess import InProcessGrid, server_task_identity
from fedsim.engine.messages import MESSAGE_TYPE_PREPARE, encode_prepare_request
from fedsim.engine.server import Engine
from fedsim.errors import ConfigError, EngineError
from fedsim.scenario import load_scenario, parse_scenario

DIFF2 = {  # DIFF2 keeps x_{r-1} in context.state between messages: the daemon must hand the state back
    "name": "d2",
    "seed": 3,
    "rounds": 4,
    "data": {"dataset": "diabetes", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 4},
    "model": {"name": "mlp", "args": {"hidden": [6], "activation": "softplus"}},
    "strategy": {
        "name": "diff2",
        "clients_per_round": 4,
        "args": {"lr": 0.3, "restart_every": 3, "clip1": 0.8, "clip2": 2.0, "noise_ratio": 2.0},
    },
}


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def write_round(self, row):
        self.rows.append(dict(row))

    def save_checkpoint(self, **kw):
        pass


def engine_rows(scenario, *, nodes=(1, 2), app=None, node_configs=None):
    rec = Rows()
    grid = InProcessGrid(list(nodes), app=app, node_configs=node_configs)
    with server_task_identity():
        Engine(scenario, rec, expected_workers=len(nodes)).run(grid)
    return [{k: v for k, v in r.items() if not k.startswith("time_") and "wall" not in k} for r in rec.rows]


@pytest.fixture
def socket_dir():
    path = Path(tempfile.mkdtemp(prefix="fedsim-test-"))  # short: a Unix socket path has about 100 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(socket_dir):
    """The warm worker serving from a thread; yields its socket and the message types it answered."""
    path, seen, worker = socket_dir / "worker.sock", [], worker_handler()

    def handler(message, context):
        seen.append(message.metadata.message_type)
        return worker(message, context)

    with listening(path) as sock:
        thread = threading.Thread(target=serve, args=(sock, handler), daemon=True)
        thread.start()
        yield path, seen
        sock.shutdown(socket.SHUT_RDWR)
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert not path.exists()  # removed with the daemon


def test_engine_rows_through_the_daemon_are_the_workers_and_context_state_comes_back(daemon):
    path, seen = daemon
    sc = parse_scenario(DIFF2)
    configs = {n: {WORKER_KEY: str(path)} for n in (1, 2)}
    through = engine_rows(sc, app=client_app, node_configs=configs)
    assert (
        seen.count(MESSAGE_TYPE_PREPARE) == 2 and len(seen) == 2 + 2 * sc.rounds
    )  # every message went there
    assert through == engine_rows(sc)  # bit for bit: the same messages, the same worker
    assert [r["round"] for r in through] == [1, 2, 3, 4]


def test_the_forwarder_without_a_daemon_runs_the_worker_in_its_own_process():
    sc = load_scenario(TINY)
    assert engine_rows(sc, app=client_app) == engine_rows(sc)
    probe = "import sys, fedsim.deploy.forward; print(sorted(m for m in ('torch', 'fedsim.engine') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # the per-message ClientApp process imports neither until it must


def prepare_message(scenario) -> tuple[Message, Context]:
    with server_task_identity():
        msg = Message(
            content=encode_prepare_request(scenario),
            message_type=MESSAGE_TYPE_PREPARE,
            dst_node_id=7,
            group_id="",
        )
    msg.metadata.__dict__["_message_id"] = "m1"
    ctx = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    return msg, ctx


def test_an_unreachable_daemon_is_one_error_reply_naming_its_socket_and_the_run_stops_on_it(socket_dir):
    gone = socket_dir / "gone.sock"
    msg, ctx = prepare_message(DIFF2)
    ctx.node_config[WORKER_KEY] = str(gone)
    reply = client_app(msg, ctx)
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert f"fedsim worker daemon unreachable at {gone}" in reply.error.reason
    assert reply.metadata.reply_to_message_id == "m1"
    with pytest.raises(
        EngineError, match=f"worker 1 failed to prepare: fedsim worker daemon unreachable at {gone}"
    ):
        engine_rows(
            parse_scenario(DIFF2), nodes=(1,), app=client_app, node_configs={1: {WORKER_KEY: str(gone)}}
        )


def test_a_daemon_that_dies_mid_request_is_an_error_reply_not_a_hang(socket_dir):
    path = socket_dir / "dies.sock"
    with listening(path) as sock:

        def die():  # takes the request, then exits without a reply
            conn, _ = sock.accept()
            conn.recv(16)
            conn.close()

        thread = threading.Thread(target=die, daemon=True)
        thread.start()
        msg, ctx = prepare_message(DIFF2)
        ctx.node_config[WORKER_KEY] = str(path)
        reply = client_app(msg, ctx)
        thread.join(timeout=10)
    assert (
        reply.has_error() and f"fedsim worker daemon at {path} failed before replying" in reply.error.reason
    )


def test_a_failing_message_is_an_error_reply_and_the_daemon_keeps_serving(socket_dir):
    path = socket_dir / "w.sock"

    def handler(message, context):
        if message.metadata.message_id == "bad":
            raise RuntimeError("no such dataset")
        return Message(RecordDict(), reply_to=message)

    with listening(path) as sock:
        thread = threading.Thread(target=serve, args=(sock, handler), kwargs={"requests": 2}, daemon=True)
        thread.start()
        msg, ctx = prepare_message(DIFF2)
        msg.metadata.__dict__["_message_id"] = "bad"
        bad, _ = call_worker(path, msg, ctx)
        msg.metadata.__dict__["_message_id"] = "good"
        good, _ = call_worker(path, msg, ctx)
        thread.join(timeout=10)
    assert bad.has_error() and "no such dataset" in bad.error.reason
    assert not good.has_error() and good.metadata.reply_to_message_id == "good"


def test_the_socket_is_private_and_a_stale_one_is_replaced_a_live_one_refused(socket_dir):
    path = socket_dir / "w.sock"
    assert os.stat(socket_dir).st_mode & 0o777 == 0o700
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays; nothing listens
    with listening(path):
        assert os.stat(path).st_mode & 0o777 == 0o600
        with pytest.raises(ConfigError, match="no other worker daemon listens"), listening(path):
            pass
    open_dir = socket_dir / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(ConfigError, match=f"chmod 700 {open_dir}"), listening(open_dir / "w.sock"):
        pass
    with listening(socket_dir / "new" / "w.sock"):  # a missing directory is made private
        assert os.stat(socket_dir / "new").st_mode & 0o777 == 0o700


def test_the_supernode_node_config_names_the_socket_as_flower_parses_it():
    cmd = supernode_command(
        superlink=SuperLinkAddress("127.0.0.1", 9093), partition_id=1, num_partitions=2, runtime_port=9094,
        ca_cert=None, private_key=None, worker_socket=Path("/tmp/fedsim-workers-x/worker-1.sock"),
    )  # fmt: skip
    config = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert config == {
        "partition-id": 1,
        "num-partitions": 2,
        WORKER_KEY: "/tmp/fedsim-workers-x/worker-1.sock",
    }
