"""A run stopped any way and resumed from its checkpoint gives what an uninterrupted run gives, bit for bit.

Oracle: the same scenario run without interruption (in-process backend, two workers). For every strategy family
(sync rounds with and without DP, the event-driven clock, gossip, DIFF2) the run is stopped after a step, either
as Ctrl-C does (the driver writes a checkpoint at that step) or as a crash does (the process dies after writing
the step's row but before its checkpoint: the resumed run computes that row again), then resumed from the results
folder as ``fedsim run --resume`` does. ``metrics.jsonl`` (wall-clock fields aside) and ``model.pt`` must be equal.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch

import fedsim.engine.setup as setup
from fedsim.engine.loop import FAMILIES as LOOP_FAMILIES
from fedsim.engine.loop import family_of
from fedsim.engine.simulation import simulate
from fedsim.errors import ConfigError
from fedsim.results import RunDir, new_run_dir, read_metrics
from fedsim.resume import find_resume_point
from fedsim.scenario import parse_scenario
from fedsim.stopping import RunStopped, StopRequest
from strategies import build_strategy

BASE = {
    "name": "resume",
    "seed": 3,
    "rounds": 5,
    "data": {"dataset": "digits", "partitioner": "dirichlet", "partitioner_args": {"alpha": 0.5}},
    "population": {"clients": 12, "devices": {"availability": 0.8, "failure": 0.1}},
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "client": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedavg", "clients_per_round": 5},
    "engine": {"workers": 2, "backend": "inprocess"},
    "evaluation": {"every": 2},
    "output": {"checkpoint_every": 1, "checkpoint_every_s": 0},
}
DP = {"noise_multiplier": 1.0, "clip": 0.5, "accountants": ["rdp"]}
CASES = {
    "fedavg": {},
    "fedyogi": {
        "strategy": {
            "name": "fedyogi",
            "clients_per_round": 5,
            "server_optimizer": {"name": "yogi", "lr": 0.05},
        }
    },
    "client-dp": {"privacy": {**DP, "insecure_seed": True}},
    "client-dp-secret-seeds": {"privacy": DP},
    "client-dp-adaptive": {
        "privacy": {**DP, "insecure_seed": True, "per_layer": "adaptive", "count_noise_multiplier": 1.0}
    },
    "sample-dp": {"privacy": {**DP, "level": "sample", "clip": 1.0, "insecure_seed": True}},
    "fedbuff": {
        "population": {"clients": 8, "devices": {"profile": "F-80", "failure": 0.1}},
        "strategy": {"name": "fedbuff", "clients_per_round": 4, "args": {"buffer": 3}},
    },
    "fedfix": {"strategy": {"name": "fedfix", "clients_per_round": 6, "args": {"window_s": 0.7}}},
    "gossip": {
        "strategy": {"name": "gossip"},
        "gossip": {
            "topology": {"kind": "regular", "args": {"k": 4}},
            "ticks": 40,
            "eval_every": 8,
            "timeout": 6,
        },
    },
    "diff2-dp": {
        "data": {"dataset": "diabetes", "partitioner": "iid", "partitioner_args": {}},
        "population": {"clients": 4, "devices": {}},
        "model": {"name": "mlp", "args": {"hidden": [6], "activation": "softplus"}},
        "strategy": {
            "name": "diff2",
            "clients_per_round": 4,
            "args": {"lr": 0.3, "restart_every": 3, "clip1": 0.8, "clip2": 2.0, "noise_ratio": 2.0},
        },
        "privacy": {
            "level": "sample",
            "noise_multiplier": 0.5,
            "insecure_seed": True,
            "accountants": ["rdp"],
        },
    },
}
WALL = {"wall_time_s", "round_wall_s"}


def scenario(case):
    over = CASES[case]
    data = {**BASE, **over}
    if "population" in over and "devices" not in over["population"]:
        data["population"] = {**over["population"], "devices": BASE["population"]["devices"]}
    return parse_scenario(data)


class Crash(Exception):
    """Stands for the process dying (kill -9, out of memory) right after a step's row was written."""


@pytest.fixture
def secrets(monkeypatch):
    """Make the OS CSPRNG draws of a DP run (cohort seed, server noise) reproducible per "process": a fresh
    start draws one set, a resumed process another; equal results then prove the checkpoint's secrets were used."""
    phase = {"name": "fresh"}
    seeds = {"fresh": 1111, "resumed": 2222}
    monkeypatch.setattr(setup, "secret_seed", lambda: seeds[phase["name"]])
    monkeypatch.setattr(
        setup, "secure_generator", lambda: torch.Generator().manual_seed(seeds[phase["name"]] + 1)
    )
    return phase


def start(sc, root: Path, *, stop_after: int | None = None, crash_after: int | None = None) -> Path:
    """Run ``sc`` into a new results folder; stop (as Ctrl-C does) or crash after a step."""
    path = new_run_dir(sc, root=root)
    recorder, stop = RunDir(path, sc), StopRequest()

    def on_round(row):
        if row["round"] == stop_after:
            stop.set("SIGINT")
        if row["round"] == crash_after:
            raise Crash

    try:
        simulate(sc, recorder, on_round=on_round, stop=stop)
    except (RunStopped, Crash):
        assert stop_after is not None or crash_after is not None
    finally:
        recorder.close()
    return path


def resume(path: Path) -> Path:
    """What ``fedsim run --resume PATH`` does: the newest checkpoint, the rows it holds, the run continued."""
    point = find_resume_point(path)
    recorder = RunDir(path, point.scenario, rows=point.rows)
    try:
        simulate(point.scenario, recorder, resume=point.state)
    finally:
        recorder.close()
    return path


def comparable(path: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k not in WALL and not k.startswith("time_")}
        for row in read_metrics(path / "metrics.jsonl")
    ]


def assert_same_run(ours: Path, oracle: Path) -> None:
    assert comparable(ours) == comparable(oracle)
    a, b = torch.load(ours / "model.pt"), torch.load(oracle / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_cases_cover_every_family():
    families = {
        family_of(build_strategy(scenario(c).strategy, scenario(c).population.clients)) for c in CASES
    }
    assert families == set(LOOP_FAMILIES)


@pytest.mark.parametrize("how", ["stop", "crash"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_run_equals_the_uninterrupted_one(case, how, tmp_path, secrets):
    sc = scenario(case)
    oracle = start(sc, tmp_path / "oracle")
    rounds = [row["round"] for row in read_metrics(oracle / "metrics.jsonl")]
    assert len(rounds) >= 4, rounds
    at = rounds[len(rounds) // 2]
    stopped = start(sc, tmp_path / "ours", **({"stop_after": at} if how == "stop" else {"crash_after": at}))
    assert not (stopped / "model.pt").exists()
    # both leave the step's row; a crash leaves it without a checkpoint
    assert [row["round"] for row in read_metrics(stopped / "metrics.jsonl")] == [r for r in rounds if r <= at]
    secrets["name"] = "resumed"
    assert_same_run(resume(stopped), oracle)


def test_a_run_resumes_again_after_a_second_stop(tmp_path):
    sc = scenario("fedbuff")
    oracle = start(sc, tmp_path / "oracle")
    ours = start(sc, tmp_path / "ours", stop_after=1)
    point = find_resume_point(ours)
    recorder, stop = RunDir(ours, point.scenario, rows=point.rows), StopRequest()
    with pytest.raises(RunStopped) as stopped:
        simulate(
            point.scenario, recorder, resume=point.state, stop=stop, on_round=lambda row: stop.set("SIGTERM")
        )
    recorder.close()
    assert stopped.value.step == 2 and stopped.value.checkpoint == ours / "checkpoints" / "round-2.pt"
    assert_same_run(resume(ours), oracle)


def test_checkpoints_are_owner_only_and_the_newest_few_are_kept(tmp_path):
    sc = parse_scenario({**BASE, "rounds": 6, "output": {"checkpoint_every": 1, "keep_checkpoints": 2}})
    path = start(sc, tmp_path)
    kept = sorted(p.name for p in (path / "checkpoints").iterdir())
    assert kept == ["round-5.pt", "round-6.pt"]
    for p in (path / "checkpoints").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    sc = scenario("fedavg")
    oracle = start(sc, tmp_path / "oracle")
    ours = start(sc, tmp_path / "ours", crash_after=3)
    (ours / "checkpoints" / "round-2.pt").write_bytes(b"torn")  # as a disk failure would leave it
    assert find_resume_point(ours).step == 1
    assert_same_run(resume(ours), oracle)


def test_resuming_a_finished_run_a_changed_scenario_or_another_fedsim_is_refused(tmp_path, monkeypatch):
    sc = scenario("fedavg")
    done = start(sc, tmp_path / "done")
    assert find_resume_point(done).finished
    stopped = start(sc, tmp_path / "stopped", stop_after=2)
    with pytest.raises(ConfigError, match=r"^--resume .*scenario"):
        find_resume_point(stopped, scenario=parse_scenario({**BASE, "seed": 4}))
    text = (stopped / "scenario.yaml").read_text()
    (stopped / "scenario.yaml").write_text(text.replace("seed: 3", "seed: 4"))
    with pytest.raises(ConfigError, match=r"^--resume .*changed"):
        find_resume_point(stopped)
    (stopped / "scenario.yaml").write_text(text)
    import fedsim.resume

    monkeypatch.setattr(fedsim.resume, "__version__", "9.9.9")
    with pytest.raises(ConfigError, match=r"^--resume .*written by this fedsim"):
        find_resume_point(stopped)
    with pytest.raises(ConfigError, match=r"^--resume .*scenario.yaml"):
        find_resume_point(tmp_path)


def test_metrics_hold_exactly_the_checkpoint_rows_when_a_run_resumes(tmp_path):
    sc = scenario("fedavg")
    path = start(sc, tmp_path, crash_after=3)
    with (path / "metrics.jsonl").open("a") as f:
        f.write('{"round": 4, "torn')  # a line cut by kill -9
    point = find_resume_point(path)
    RunDir(path, point.scenario, rows=point.rows).close()
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]


def test_a_failing_worker_stops_the_run_in_one_line_that_says_how_to_resume(tmp_path, monkeypatch):
    """A worker that raises in round 3 (after the checkpoints of rounds 1 and 2) stops the run; the error names
    the round and the resume command, and the resumed run ends as an uninterrupted one."""
    import fedsim.engine.worker as worker
    from fedsim.errors import EngineError
    from fedsim.run import run_scenario

    sc = scenario("fedavg")
    oracle = start(sc, tmp_path / "oracle")
    real = worker.handle_train

    def flaky(request):
        if request.round == 3:
            raise MemoryError("worker out of memory\nsecond line of a long explanation")
        return real(request)

    monkeypatch.setattr(worker, "handle_train", flaky)
    with pytest.raises(EngineError) as failed:
        run_scenario(sc, output_root=tmp_path / "ours", show_progress=False)
    run_dir = next((tmp_path / "ours").glob("*/*"))
    message = str(failed.value)
    assert "\n" not in message and "round 3" in message and "out of memory" in message
    assert message.endswith(f"The run can continue from its newest checkpoint: fedsim run --resume {run_dir}")
    monkeypatch.setattr(worker, "handle_train", real)
    assert_same_run(resume(run_dir), oracle)
