"""``engine.backend``: the rule ``auto`` follows, the in-process Grid's contract, and every strategy family on the
in-process backend giving what the engine gives over the test grid (the Ray comparison is in tests/e2e).

Oracles: hand-worked scenarios for the rule and its monotonicity law; Flower's own conventions for what a
SuperNode answers (error codes, the reason format ``<class 'E'>:<'message'>``); for the families, the engine run
over the test ``LocalGrid`` with the same workers (same sharding), compared row by row (wall-clock fields aside)
and parameter by parameter, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st
from local_grid import LocalGrid, MemoryRecorder

from fedsim.engine.inprocess import InProcessGrid, server_task_identity, torch_threads
from fedsim.engine.server import Engine
from fedsim.engine.simulation import inprocess_workers, simulate
from fedsim.errors import ConfigError
from fedsim.scenario import parse_scenario
from fedsim.scenario.backend import AUTO_INPROCESS_MAX_CLIENT_EPOCHS, BackendChoice, choose_backend

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "name": "backends",
    "seed": 4,
    "rounds": 2,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 12},
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "client": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedavg", "clients_per_round": 6},
}


def scenario(**over):
    return parse_scenario({**TINY, **over})


# --- the rule ------------------------------------------------------------------------------------------------


def test_quickstart_runs_in_process_and_a_thousand_client_cohort_on_ray():
    from fedsim.scenario import load_scenario

    quick = choose_backend(load_scenario(ROOT / "scenarios" / "quickstart.yaml"))
    assert quick.name == "inprocess" and "50 client-epochs" in quick.reason  # 10 clients x 5 epochs
    big = scenario(population={"clients": 5000}, strategy={"name": "fedavg", "clients_per_round": 1000})
    assert choose_backend(big).name == "ray"


def test_settings_only_ray_honours_choose_ray_and_refuse_inprocess():
    for engine, field in (({"ray_address": "ray://head:10001"}, "engine.ray_address"), ({"gpus_per_worker": 0.5}, "engine.gpus_per_worker")):  # fmt: skip
        assert choose_backend(scenario(engine=engine)) == BackendChoice("ray", f"auto: {field} is set")
        with pytest.raises(ConfigError) as err:
            choose_backend(scenario(engine={**engine, "backend": "inprocess"}))
        assert str(err.value).startswith(f"{field} must be unset with engine.backend 'inprocess'")
        assert "\n" not in str(err.value)


def test_several_worker_processes_asked_for_mean_ray_and_one_means_in_process():
    assert choose_backend(scenario(engine={"workers": 2})).name == "ray"
    assert choose_backend(scenario(engine={"workers": 1})).name == "inprocess"
    # an explicit backend is honoured whatever the size
    assert choose_backend(scenario(engine={"workers": 4, "backend": "inprocess"})).name == "inprocess"
    assert choose_backend(scenario(engine={"backend": "ray"})).name == "ray"
    assert inprocess_workers(scenario(engine={"workers": 3, "backend": "inprocess"})) == 3
    assert inprocess_workers(scenario()) == 1


def test_gossip_and_diff2_count_the_whole_population():
    gossip = scenario(population={"clients": 300}, strategy={"name": "gossip", "clients_per_round": 1})
    assert choose_backend(gossip).name == "ray"  # 300 nodes train at every tick
    assert choose_backend(scenario(population={"clients": 300})).name == "inprocess"  # 6 of 300 per round


@settings(max_examples=60, deadline=None)
@given(
    cohort=st.integers(1, 2000),
    more=st.integers(0, 2000),
    epochs=st.integers(1, 6),
)
def test_a_bigger_round_never_moves_a_run_from_ray_back_in_process(cohort, more, epochs):
    def choice(k):
        return choose_backend(
            scenario(
                population={"clients": 4000},
                strategy={"name": "fedavg", "clients_per_round": k},
                client={**TINY["client"], "epochs": epochs},
            )
        ).name

    small, big = choice(cohort), choice(cohort + more)
    assert not (small == "ray" and big == "inprocess")
    # the threshold is in client-epochs: one client of one epoch always fits, a round past it never does
    assert choice(1) == "inprocess"
    assert choice(AUTO_INPROCESS_MAX_CLIENT_EPOCHS // epochs + 1) == "ray"


# --- the in-process Grid -------------------------------------------------------------------------------------


@pytest.fixture
def counting_app():
    """A ClientApp that counts, in ``context.state``, the messages its node got, and raises on request."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        if "raise" in msg.content.config_records["c"]:
            raise ZeroDivisionError("division by zero")
        if "sleep" in msg.content.config_records["c"]:
            time.sleep(float(msg.content.config_records["c"]["sleep"]))
        seen = int(context.state.config_records["n"]["n"]) + 1 if "n" in context.state.config_records else 1
        context.state["n"] = ConfigRecord({"n": seen})
        return Message(RecordDict({"c": ConfigRecord({"seen": seen, "node": context.node_id})}), reply_to=msg)

    return app


def train_message(node, **cfg):
    return Message(RecordDict({"c": ConfigRecord({"x": 1, **cfg})}), message_type="train", dst_node_id=node)


def test_node_state_persists_and_a_node_works_in_push_order(counting_app):
    grid = InProcessGrid([5, 6], app=counting_app)
    ids = grid.push_messages([train_message(5), train_message(6), train_message(5), train_message(5)])
    assert grid.pull_messages([]) == []  # nothing asked, nothing returned; the nodes still did the work
    replies = grid.pull_messages(list(reversed(ids)))
    by_id = {r.metadata.reply_to_message_id: r.content.config_records["c"] for r in replies}
    assert [by_id[i]["seen"] for i in ids] == [1, 1, 2, 3]
    assert [by_id[i]["node"] for i in ids] == [5, 6, 5, 5]
    assert grid.pull_messages(ids) == []  # each reply is handed out once
    grid.forget_state(5)
    (again,) = grid.send_and_receive([train_message(5)])
    assert again.content.config_records["c"]["seen"] == 1  # a restarted node starts over


def test_errors_come_back_as_a_supernode_sends_them(counting_app):
    grid = InProcessGrid([5], app=counting_app)
    raised, gone = grid.send_and_receive([train_message(5, **{"raise": 1}), train_message(9)])
    assert raised.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert raised.error.reason == "<class 'ZeroDivisionError'>:<'division by zero'>"
    assert gone.error.code == ErrorCode.NODE_UNAVAILABLE
    expired = train_message(5)
    expired.metadata.__dict__["_ttl"] = 0.01
    time.sleep(0.02)
    (late,) = grid.send_and_receive([expired])
    assert late.error.code == ErrorCode.REPLY_MESSAGE_UNAVAILABLE
    (fine,) = grid.send_and_receive([train_message(5)])
    assert not fine.has_error()  # the node went on after its ClientApp raised


def test_a_reply_later_than_the_deadline_never_comes(counting_app):
    grid = InProcessGrid([5], app=counting_app, reply_deadline_s=0.05)
    slow, quick = grid.push_messages([train_message(5, sleep=0.1), train_message(5)])
    got = [r.metadata.reply_to_message_id for r in grid.pull_messages([slow, quick])]
    assert got == []  # the quick one waited behind the slow one on the same node: both past the deadline
    (ok,) = grid.send_and_receive([train_message(5)])
    assert not ok.has_error()


def test_ctrl_c_in_a_clientapp_is_not_turned_into_an_error_reply():
    app = ClientApp()

    @app.train()
    def train(msg, context):
        raise KeyboardInterrupt

    grid = InProcessGrid([5], app=app)
    ids = grid.push_messages([train_message(5)])
    with pytest.raises(KeyboardInterrupt):
        grid.pull_messages(ids)


def test_identity_and_threads_are_restored_after_the_run():
    before = {k: TaskIdentity.__dict__[k] for k in ("_task_id", "_run_id", "_node_id")}
    threads = torch.get_num_threads()
    with server_task_identity(7), torch_threads(1):
        assert TaskIdentity.run_id == 7 and torch.get_num_threads() == 1
    assert {k: TaskIdentity.__dict__[k] for k in before} == before
    assert torch.get_num_threads() == threads


class ReversedArrivals(LocalGrid):
    """Replies come back in the reverse of the order they were asked for (a later worker finishing first)."""

    def pull_messages(self, message_ids):
        return list(reversed(super().pull_messages(message_ids)))


def test_a_round_does_not_depend_on_which_worker_answers_first():
    """On Ray the faster worker's reply comes first; the engine reduces replies in node order, so the rows and
    the model are the same whichever order they arrived in."""
    sc = scenario(population={"clients": 30}, strategy={"name": "fedavg", "clients_per_round": 21})
    runs = []
    for grid in (LocalGrid([1, 2, 3]), ReversedArrivals([1, 2, 3])):
        rec = KeepParams()
        Engine(sc, rec, expected_workers=3).run(grid)
        runs.append(rec)
    assert [comparable(r) for r in runs[0].rows] == [comparable(r) for r in runs[1].rows]
    for k, v in runs[0].params.items():
        assert torch.equal(v, runs[1].params[k]), k


# --- every family on the in-process backend ------------------------------------------------------------------

WALL_CLOCK = ("wall_time_s", "round_wall_s", "time_superstep_s")


def comparable(row):
    return {k: v for k, v in row.items() if k not in WALL_CLOCK and not k.startswith("time_")}


class KeepParams(MemoryRecorder):
    params: dict[str, torch.Tensor] = {}

    def save_checkpoint(self, *, round, params, strategy_state, final=False, resume=None):
        super().save_checkpoint(round=round, params=params, strategy_state=strategy_state, final=final)
        self.params = {k: v.detach().clone() for k, v in params.items()}


DP = {"noise_multiplier": 1.0, "clip": 0.5, "insecure_seed": True, "accountants": ["rdp"]}
FAMILIES = {
    "fedavg": {},
    "fedadam-client-dp": {
        "strategy": {
            "name": "fedadam",
            "clients_per_round": 6,
            "server_optimizer": {"name": "adam", "lr": 0.01},
        },
        "privacy": DP,
    },  # fmt: skip
    "sample-dp": {"privacy": {**DP, "level": "sample", "clip": 1.0}},
    "fedbuff": {
        "population": {"clients": 8, "devices": {"profile": "F-80"}},
        "rounds": 4,
        "strategy": {"name": "fedbuff", "clients_per_round": 8, "args": {"buffer": 3}},
    },  # fmt: skip
    "gossip": {
        "strategy": {"name": "gossip"},
        "gossip": {
            "topology": {"kind": "regular", "args": {"k": 4}},
            "ticks": 30,
            "eval_every": 15,
            "timeout": 20,
        },
    },  # fmt: skip
    "dp_gd": {
        "data": {"dataset": "diabetes", "partitioner": "iid", "partitioner_args": {}},
        "population": {"clients": 5},
        "model": {"name": "mlp", "args": {"hidden": [6], "activation": "softplus"}},
        "strategy": {"name": "dp_gd", "clients_per_round": 5, "args": {"lr": 0.3, "clip": 0.8}},
        "privacy": {
            "level": "sample",
            "noise_multiplier": 0.5,
            "insecure_seed": True,
            "accountants": ["rdp"],
        },
    },  # fmt: skip
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_on_the_inprocess_backend_equals_the_engine_over_the_test_grid(family):
    sc = scenario(**FAMILIES[family], engine={"workers": 2, "backend": "inprocess"})
    assert choose_backend(sc).name == "inprocess"
    ours = KeepParams()
    summary = simulate(sc, ours)
    oracle = KeepParams()
    Engine(sc, oracle, expected_workers=2).run(LocalGrid([1, 2]))
    assert summary.rounds == sc.planned_rounds and len(ours.rows) == len(oracle.rows) > 0
    for a, b in zip(ours.rows, oracle.rows, strict=True):
        assert comparable(a) == comparable(b)
    assert ours.params.keys() == oracle.params.keys()
    for k in ours.params:
        assert torch.equal(ours.params[k], oracle.params[k]), k


# --- start-up and Ctrl-C, through the command ------------------------------------------------------------------


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_an_inprocess_run_imports_neither_ray_nor_the_accountants():
    """Ray's and the privacy accountants' imports cost seconds at start-up; a small non-DP run needs neither."""
    code = (
        "import sys, json\n"
        "from fedsim.scenario import parse_scenario\n"
        "from fedsim.engine.simulation import simulate\n"
        "sys.path.insert(0, 'tests/engine')\n"
        "from local_grid import MemoryRecorder\n"
        f"simulate(parse_scenario({{**{TINY!r}, 'rounds': 1}}), MemoryRecorder())\n"
        "print(json.dumps([m for m in ('ray', 'flwr.simulation', 'opacus', 'dp_accounting') if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def fedsim_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", *args],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test run started in the background inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_rows(proc: subprocess.Popen, root: Path, pattern: str, rows: int) -> Path:
    """The metrics file under ``root`` matching ``pattern`` once it holds ``rows`` rows."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(root.glob(pattern))
        if found and len(found[0].read_text().splitlines()) >= rows:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(proc.communicate(timeout=10))


def test_ctrl_c_and_sigterm_stop_a_run_with_one_line_and_it_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(json.dumps({**TINY, "name": "long", "rounds": 100000}))
    proc = fedsim_process("run", str(path), "--output", str(tmp_path / "runs"))
    metrics = wait_for_rows(proc, tmp_path / "runs", "long/*/metrics.jsonl", 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines[0].startswith("starting 1 inprocess worker (auto: 6 client-epochs per round")
    run_dir = metrics.parent
    assert lines[-1].startswith("fedsim: stopped by SIGINT after step ")
    assert lines[-1].endswith(f"checkpoint written. Resume with: fedsim run --resume {run_dir}")
    assert "Traceback" not in err
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert len(rows) >= 3 and [r["round"] for r in rows] == list(range(1, len(rows) + 1))
    assert (run_dir / "report.md").is_file()
    assert (run_dir / "checkpoints" / f"round-{len(rows)}.pt").is_file()  # the checkpoint of the last row

    proc = fedsim_process("run", "--resume", str(run_dir))
    wait_for_rows(proc, run_dir, "metrics.jsonl", len(rows) + 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.splitlines()[-1].startswith("fedsim: stopped by SIGTERM after step ") and "Traceback" not in err
    more = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert len(more) > len(rows) + 2 and [r["round"] for r in more] == list(range(1, len(more) + 1))
