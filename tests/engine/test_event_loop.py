"""The engine's event loop (FedFix, async FedAvg, FedBuff, sync FedAvg) through an in-process Grid (no Ray).

Oracles: the reductions of Fraboni et al. (F-0 FedFix with Δt ≥ τ is FedAvg; async FedAvg with one client is
sequential local training, checked against a hand loop of ``train_local``), the schedule itself (participation
and staleness in the rows), and per-client deltas computed one client at a time (grouped sums on the workers).
"""

from __future__ import annotations

import pytest
import torch
from local_grid import LocalGrid, MemoryRecorder

from clients.local_sgd import train_local
from fedsim.engine.accumulate import CohortAccumulator
from fedsim.engine.cohort import train_cohort_sequential
from fedsim.engine.rounds import client_seed
from fedsim.engine.server import Engine
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.engine.vectorized import train_cohort_vectorized
from fedsim.models import build_model
from fedsim.protocol import ClientTask, TrainConfig
from fedsim.scenario import parse_scenario

BASE = {
    "name": "events",
    "seed": 3,
    "rounds": 6,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 10, "devices": {"profile": "F-80"}},
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedfix", "clients_per_round": 10, "args": {"window_s": 0.5}},
}


def run(overrides=None, nodes=(11, 22)):
    sc = parse_scenario({**BASE, **(overrides or {})})
    rec = MemoryRecorder()
    grid = LocalGrid(list(nodes))
    Engine(sc, rec, expected_workers=len(nodes)).run(grid)
    return rec, grid


def test_fedfix_rows_follow_the_schedule_and_learn():
    rec, grid = run({"rounds": 8})
    rows = rec.rows
    assert [r["round"] for r in rows] == list(range(1, 9))
    assert [r["virtual_time_s"] for r in rows] == pytest.approx([0.5 * (n + 1) for n in range(8)])
    # F-80, M = 10, Δt = 0.5: the 4 fast clients every step, the 6 slow ones every other step
    assert [r["clients"] for r in rows] == [4, 10, 4, 10, 4, 10, 4, 10]
    assert max(r["staleness_max"] for r in rows) == 1
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
    # one message per worker per server step that started clients
    assert len(grid.sent) == len(set(grid.sent))


@pytest.mark.parametrize(
    ("name", "args"),
    [("async_fedavg", {"variant": "weight"}), ("fedbuff", {"buffer": 3}), ("fedavg_sync", {"deadline_s": 0.6})],
)
def test_each_event_strategy_runs_and_learns(name, args):
    rec, _ = run({"rounds": 12, "strategy": {"name": name, "clients_per_round": 10, "args": args}})
    rows = rec.rows
    assert len(rows) == 12
    times = [r["virtual_time_s"] for r in rows]
    assert times == sorted(times)
    accs = [r["test_accuracy"] for r in rows]
    assert accs[-1] > accs[0], accs
    if name == "async_fedavg":
        assert all(r["clients"] == 1 for r in rows)
    if name == "fedbuff":
        assert all(r["clients"] == 3 for r in rows)
    if name == "fedavg_sync":  # τ <= 0.6 for clients 5..9; the others are cut at the deadline
        assert all(r["clients"] == 5 and r["dropped_cancelled"] == 5 for r in rows)


def test_f0_fedfix_with_a_window_of_tau_is_fedavg():
    f0 = {"population": {"clients": 10, "devices": {"profile": "F-0"}}}
    fix, _ = run({**f0, "strategy": {"name": "fedfix", "clients_per_round": 10, "args": {"window_s": 1.0}}})
    avg, _ = run({**f0, "strategy": {"name": "fedavg_sync", "clients_per_round": 10}})
    for a, b in zip(fix.rows, avg.rows, strict=True):
        assert a["virtual_time_s"] == b["virtual_time_s"] and a["clients"] == b["clients"] == 10
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-6)


def test_async_with_one_client_is_sequential_local_training():
    one = {
        "rounds": 3,
        "population": {"clients": 1, "devices": {"profile": "F-80"}},
        "strategy": {"name": "async_fedavg", "clients_per_round": 1},
    }
    rec, _ = run(one, nodes=(11,))
    sc = parse_scenario({**BASE, **one})
    data = build_data(sc)
    model = build_initial_model(sc, data)
    x, y = data.client_data(0)
    for version in range(3):  # d = p·τ·(1/τ) = 1: θ_{n+1} = local(θ_n)
        train_local(
            model, x, y, epochs=1, batch_size=32, optimizer="sgd", optimizer_args={"lr": 0.1},
            generator=torch.Generator().manual_seed(client_seed(sc.seed, version, 0)),
        )  # fmt: skip
    logits = model(data.test_x)
    loss = torch.nn.functional.cross_entropy(logits, data.test_y).item()
    assert rec.rows[-1]["test_loss"] == pytest.approx(loss, rel=1e-5)


def test_failures_are_dropped_counted_and_the_run_goes_on():
    rec, _ = run({"rounds": 10, "population": {"clients": 10, "devices": {"profile": "F-80", "failure": 0.3}}})
    assert len(rec.rows) == 10
    assert sum(r["dropped_failure"] for r in rec.rows) > 0
    assert all(r["dropped"] >= r["dropped_failure"] for r in rec.rows)


def test_an_availability_trace_keeps_offline_clients_out(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("client,start_s,end_s\n0,100,200\n1,100,200\n")  # clients 0 and 1 offline until t = 100
    rec, _ = run({"rounds": 6, "population": {"clients": 10, "devices": {"profile": "F-80",
                                                                         "availability": {"trace": str(trace)}}}})
    assert all(r["clients"] <= 8 for r in rec.rows)
    assert [r["clients"] for r in rec.rows] == [4, 8, 4, 8, 4, 8]


@pytest.mark.parametrize("trainer", [train_cohort_sequential, train_cohort_vectorized])
def test_grouped_tasks_sum_weighted_updates_per_group(trainer):
    sc = parse_scenario(BASE)
    data = build_data(sc)
    model = build_model("mlp", {"hidden": [16]}, input_shape=data.input_shape, num_classes=10, seed=0)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", optimizer_args={"lr": 0.1})
    tasks = [ClientTask(c, 50 + c, weight=0.1 * (c + 1), group=c % 2) for c in range(4)]
    got = trainer(model, theta, tasks, data, cfg)
    assert sorted(got.group_sums) == [0, 1]
    for g in (0, 1):  # oracle: one client at a time, weighted by hand
        expected = {k: torch.zeros_like(v) for k, v in theta.items()}
        for t in tasks:
            if t.group != g:
                continue
            one = train_cohort_sequential(model, theta, [ClientTask(t.cid, t.seed)], data, cfg)
            n = one.num_examples[0]
            for k in expected:
                expected[k] += t.weight * one.weighted_delta_sum[k] / n
        for k in theta:
            torch.testing.assert_close(got.group_sums[g][k], expected[k], rtol=1e-4, atol=1e-6)


def test_an_accumulator_without_groups_keeps_the_example_weights():
    theta = {"w": torch.zeros(2)}
    acc = CohortAccumulator(theta, None, [ClientTask(0, 1)])
    acc.add(0, {"w": torch.ones(2)}, 5, 0.0)
    r = acc.finish()
    assert r.group_sums == {} and torch.equal(r.weighted_delta_sum["w"], torch.full((2,), 5.0))


def test_dp_with_an_event_strategy_is_refused_before_anything_runs():
    from fedsim.engine.preflight import check_before_run
    from fedsim.errors import ConfigError

    sc = parse_scenario({**BASE, "privacy": {"noise_multiplier": 1.0}})
    with pytest.raises(ConfigError, match="privacy"):
        check_before_run(sc)


def test_a_bad_trace_file_is_a_config_error_naming_the_field(tmp_path):
    from fedsim.engine.preflight import check_before_run
    from fedsim.errors import ConfigError

    missing = {**BASE, "population": {"clients": 10, "devices": {"availability": {"trace": str(tmp_path / "x")}}}}
    with pytest.raises(ConfigError, match=r"population\.devices\.availability\.trace"):
        check_before_run(parse_scenario(missing))
    bad = tmp_path / "bad.csv"
    bad.write_text("client,start_s,end_s\n3,5,1\n")  # end before start
    broken = {**BASE, "population": {"clients": 10, "devices": {"availability": {"trace": str(bad)}}}}
    with pytest.raises(ConfigError, match="start_s < end_s"):
        check_before_run(parse_scenario(broken))
