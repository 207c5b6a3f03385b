"""The engine's round loop through an in-process Grid (no Ray): protocol, sharding, faults, learning."""

from __future__ import annotations

import pytest
from local_grid import LocalGrid, MemoryRecorder

from fedsim.engine.placement import shard
from fedsim.engine.rounds import client_seed
from fedsim.engine.server import Engine
from fedsim.engine.transport import wait_for_workers
from fedsim.errors import EngineError
from fedsim.scenario import parse_scenario

SMALL = {
    "name": "small",
    "seed": 1,
    "rounds": 4,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 20},
    "model": {"name": "mlp", "args": {"hidden": [32]}},
    "client": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedavg", "clients_per_round": 6},
}


def run(overrides=None, grid=None, **engine_kw):
    sc = parse_scenario({**SMALL, **(overrides or {})})
    rec = MemoryRecorder()
    grid = grid or LocalGrid([11, 22, 33])
    summary = Engine(sc, rec, expected_workers=len(grid.node_ids), **engine_kw).run(grid)
    return summary, rec, grid


def test_one_message_per_worker_per_round_and_learning():
    summary, rec, grid = run()
    assert [r["round"] for r in rec.rows] == [1, 2, 3, 4]
    # at most one message per (round, worker), after one prepare message per worker
    assert len(grid.sent) == len(set(grid.sent))
    assert grid.prepared == [11, 22, 33]
    assert all(r["clients"] == 6 and r["dropped"] == 0 for r in rec.rows)
    accs = [r["test_accuracy"] for r in rec.rows]
    assert accs[-1] > accs[0] and accs[-1] > 0.5, accs
    assert rec.checkpoints == [4]
    for key in (
        "wall_time_s",
        "round_wall_s",
        "virtual_time_s",
        "clients",
        "dropped",
        "test_loss",
        "test_accuracy",
    ):
        assert key in rec.rows[-1]


def test_same_seed_same_run():
    _, a, _ = run()
    _, b, _ = run()
    assert [r["test_accuracy"] for r in a.rows] == [r["test_accuracy"] for r in b.rows]


def test_results_do_not_depend_on_the_number_of_workers():
    _, a, _ = run(grid=LocalGrid([1, 2, 3]))
    _, b, _ = run(grid=LocalGrid([7]))
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert ra["test_accuracy"] == pytest.approx(rb["test_accuracy"], abs=1e-6)


def test_a_worker_that_does_not_answer_is_counted_as_dropped_and_the_run_goes_on():
    grid = LocalGrid([1, 2], drop=lambda rnd, node: rnd == 2 and node == 1)
    _, rec, _ = run({"engine": {"round_timeout_s": 2.0}}, grid=grid)
    r2 = rec.rows[1]
    assert r2["dropped_timeout"] > 0 and r2["dropped"] == r2["dropped_timeout"]
    assert r2["clients"] == 6 - r2["dropped"]
    assert len(rec.rows) == 4
    # the round waited for the deadline, not longer; rounds with every reply did not wait for it
    assert 2.0 <= r2["time_round_trip_s"] < 6.0
    # (training time aside: the first training call of a process also imports torch's compiler stack, ~2 s;
    # the margin is for a loaded 2-core machine)
    assert all(r["time_round_trip_s"] - r["time_train_s"] < 2.0 for r in rec.rows if r["round"] != 2)


def test_worker_error_stops_the_run_with_a_clear_message():
    grid = LocalGrid([1, 2], fail=lambda rnd, node: rnd == 1 and node == 2)
    with pytest.raises(EngineError, match="worker 2 failed in round 1: boom"):
        run(grid=grid)


def test_failures_and_availability_drop_clients():
    _, rec, _ = run({"population": {"clients": 20, "devices": {"failure": 0.5, "availability": 0.5}}})
    assert sum(r["dropped_failure"] for r in rec.rows) > 0
    assert all(r["selected"] <= 6 for r in rec.rows)


def test_virtual_time_follows_the_slowest_client():
    # speed 10 samples/s, 2 epochs, iid: a client with n examples takes 2n/10 s (+ model transfer).
    _, rec, _ = run(
        {
            "population": {
                "clients": 20,
                "devices": {
                    "speed": {"dist": "constant", "value": 10.0},
                    "bandwidth": {"dist": "constant", "value": 1e12},
                },
            }
        }
    )
    # 1437 training examples over 20 iid clients: 71 or 72 each → 14.4 s per round at most.
    assert rec.rows[0]["round_virtual_s"] == pytest.approx(2 * 72 / 10, abs=0.2)
    assert rec.rows[-1]["virtual_time_s"] == pytest.approx(sum(r["round_virtual_s"] for r in rec.rows))


def test_wait_for_workers_has_a_deadline():
    with pytest.raises(EngineError, match="only 2 of 3 workers registered"):
        wait_for_workers(LocalGrid([1, 2]), expected=3, timeout_s=0.3, poll_s=0.05)
    assert wait_for_workers(LocalGrid([5, 1]), expected=None, timeout_s=2, poll_s=0.05, settle_s=0.1) == [
        1,
        5,
    ]


def test_sharding_is_stable_and_complete():
    out = shard(range(10), [4, 9])
    assert out == {4: [0, 2, 4, 6, 8], 9: [1, 3, 5, 7, 9]}
    assert client_seed(0, 1, 5) == client_seed(0, 1, 5) != client_seed(0, 2, 5)


def test_a_worker_that_cannot_prepare_stops_the_run_with_its_reason():
    from flwr.app import Error, Message

    class BrokenPrepare(LocalGrid):
        def push_messages(self, messages):
            ids = super().push_messages(messages)
            for i, msg in zip(ids, messages, strict=True):
                if i.startswith("p"):
                    self._replies[i] = Message(Error(code=0, reason="no data here"), reply_to=msg)
            return ids

    with pytest.raises(EngineError, match="failed to prepare: no data here"):
        run(grid=BrokenPrepare([11, 22]))


def test_evaluation_test_examples_evaluates_the_first_n_of_the_test_set_and_changes_no_training():
    """The whole test set against its first 7 examples: the same training (losses), the accuracy of the first 7
    (a multiple of 1/7) equal to evaluating the same final model on them by hand."""
    import torch

    from fedsim.engine.rounds import evaluate
    from fedsim.engine.setup import build_data, build_initial_model

    few = {"rounds": 1, "evaluation": {"test_examples": 7}}
    _, full, _ = run({"rounds": 1})
    _, cut, _ = run(few)
    assert [r["train_loss"] for r in cut.rows] == [r["train_loss"] for r in full.rows]
    sc = parse_scenario({**SMALL, **few})
    data = build_data(sc)
    model = build_initial_model(sc, data)
    model.load_state_dict(cut.final_params)
    loss, acc = evaluate(model, data.test_x[:7], data.test_y[:7])
    assert cut.rows[-1]["test_accuracy"] == acc and round(acc * 7, 9) == int(round(acc * 7))
    assert cut.rows[-1]["test_loss"] == pytest.approx(loss)
    assert len(data.test_y) > 7 and torch.is_tensor(data.test_x)
