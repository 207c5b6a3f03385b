"""``faults.nonfinite`` on the workers: the drawn clients train, their new parameters become NaN, and the
finiteness check drops exactly them into ``failed``, in the per-client and the vectorised path alike, whatever the
number of workers; DIFF2's workers drop and list them too."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clients.diff2_client import diff2_round, flat_spec, flatten
from fedsim.data import FederatedData
from fedsim.engine.accumulate import CohortAccumulator
from fedsim.engine.cohort import train_cohort_sequential
from fedsim.engine.inprocess import InProcessGrid, server_task_identity
from fedsim.engine.messages import (
    MESSAGE_TYPE_DIFF2,
    MESSAGE_TYPE_TRAIN,
    Diff2Reply,
    decode_diff2_reply,
    decode_train_reply,
    encode_diff2_reply,
    encode_diff2_request,
    encode_train_request,
)
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.engine.vectorized import train_cohort_vectorized
from fedsim.faults import nonfinite_clients
from fedsim.models import build_model
from fedsim.protocol import ClientClip, ClientTask, TrainConfig, WorkerResult
from fedsim.scenario import parse_scenario


def tiny_data(sizes, shape=(16,), classes=4, seed=0) -> FederatedData:
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x, y = torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    bounds = np.cumsum([0, *sizes])
    parts = tuple(np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    return FederatedData(x, y, x[:4], y[:4], parts, classes, shape)


SIZES = [9, 12, 4, 12, 17, 3, 8, 6]


@pytest.mark.parametrize("clip", [None, ClientClip(max_norm=0.5)], ids=["weighted", "client-dp-clip"])
def test_marked_clients_are_dropped_the_same_in_the_per_client_and_the_vectorised_path(clip):
    data = tiny_data(SIZES)
    model = build_model("mlp", {"hidden": [8]}, input_shape=(16,), num_classes=4, seed=0)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="sgd", optimizer_args={"lr": 0.1}, clip=clip)
    bad = {1, 4, 6}
    tasks = [ClientTask(c, 100 + c, nonfinite=c in bad) for c in range(len(SIZES))]
    seq = train_cohort_sequential(model, theta, tasks, data, cfg)
    vec = train_cohort_vectorized(model, theta, tasks, data, cfg)
    good = [t for t in tasks if not t.nonfinite]
    clean = train_cohort_sequential(model, theta, good, data, cfg)  # the same clients, never marked
    for r in (seq, vec):
        assert r.failed == sorted(bad)
        assert r.client_ids == clean.client_ids == [t.cid for t in good]
        assert r.num_examples == clean.num_examples and r.weight_sum == clean.weight_sum
        assert len(r.update_norms) == (len(good) if clip else 0)
        for k in theta:
            torch.testing.assert_close(
                r.weighted_delta_sum[k], clean.weighted_delta_sum[k], rtol=1e-4, atol=1e-5
            )
        np.testing.assert_allclose(r.train_loss, clean.train_loss, rtol=1e-5)


def test_the_accumulator_turns_a_marked_client_into_nan_one_at_a_time_and_stacked():
    theta = {"w": torch.zeros(3)}
    tasks = [ClientTask(0, 1), ClientTask(1, 2, nonfinite=True), ClientTask(2, 3)]
    one = CohortAccumulator(theta, None, tasks)
    for t in tasks:
        one.add(t.cid, {"w": torch.ones(3) * (t.cid + 1)}, 2, 0.5)
    stacked = CohortAccumulator(theta, None, tasks)
    new = torch.stack([torch.ones(3) * (t.cid + 1) for t in tasks])
    stacked.add_stacked([0, 1, 2], {"w": new}, [2, 2, 2], [0.5, 0.5, 0.5])
    for acc in (one, stacked):
        r = acc.finish(order=[0, 1, 2])
        assert r.failed == [1] and r.client_ids == [0, 2]
        torch.testing.assert_close(r.weighted_delta_sum["w"], torch.full((3,), 2.0 * 1 + 2.0 * 3))


# -- through the real worker (the ClientApp on an in-process grid) ---------------------------------------------
RAW = {
    "name": "inject",
    "seed": 4,
    "data": {"dataset": "digits", "partitioner": "iid"},
    "population": {"clients": 12},
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "client": {"batch_size": 16},
    "strategy": {"clients_per_round": 12},
    "faults": {"nonfinite": 0.35},
}


def scenario(vectorize: str, nonfinite: float = 0.35):
    return parse_scenario({**RAW, "engine": {"vectorize": vectorize}, "faults": {"nonfinite": nonfinite}})


def train_on_workers(sc, rnd: int, cids: list[int], workers: int) -> list[WorkerResult]:
    """One train message per worker (clients ``cid % workers``), through fedsim's ClientApp; the replies."""
    data = build_data(sc)
    params = {k: v.detach().clone() for k, v in build_initial_model(sc, data).state_dict().items()}
    grid = InProcessGrid(range(1, workers + 1))
    with server_task_identity(grid.run_id):
        messages = [
            grid.create_message(
                encode_train_request(
                    scenario=sc.model_dump(mode="json"),
                    round=rnd,
                    params=params,
                    tasks=[ClientTask(c, 1000 + c) for c in cids if c % workers == w],
                ),
                MESSAGE_TYPE_TRAIN,
                w + 1,
                "",
            )
            for w in range(workers)
        ]
        replies = grid.send_and_receive(messages)
    assert not any(r.has_error() for r in replies)
    return [decode_train_reply(r.content) for r in replies]


def merged(results: list[WorkerResult]) -> tuple[list[int], list[int], dict[str, torch.Tensor]]:
    failed = sorted(c for r in results for c in r.failed)
    kept = sorted(c for r in results for c in r.client_ids)
    total = {k: sum(r.weighted_delta_sum[k] for r in results) for k in results[0].weighted_delta_sum}
    return failed, kept, total


def test_the_worker_drops_exactly_the_drawn_clients_per_client_vectorised_and_with_any_worker_count():
    cids, rnd = list(range(12)), 3
    drawn = nonfinite_clients(4, rnd, cids, 0.35)
    assert 0 < len(drawn) < len(cids)  # this seed and round draw some clients, not all
    runs = {
        (vec, workers): merged(train_on_workers(scenario(vec), rnd, cids, workers))
        for vec, workers in (("off", 1), ("on", 1), ("on", 3))
    }
    clean = merged(train_on_workers(scenario("off", 0.0), rnd, [c for c in cids if c not in drawn], 1))
    for failed, kept, total in runs.values():
        assert failed == sorted(drawn)
        assert kept == clean[1] == sorted(set(cids) - drawn)
        for k, v in total.items():
            torch.testing.assert_close(v, clean[2][k], rtol=1e-4, atol=1e-5)


def test_without_nonfinite_faults_nothing_is_marked():
    (failed, kept, _) = merged(train_on_workers(scenario("off", 0.0), 2, list(range(12)), 2))
    assert failed == [] and kept == list(range(12))


# -- DIFF2 -------------------------------------------------------------------------------------------------------
DIFF2 = {
    "name": "d2",
    "seed": 3,
    "data": {"dataset": "diabetes", "partitioner": "iid"},
    "population": {"clients": 8},
    "model": {"name": "mlp", "args": {"hidden": [4], "activation": "softplus"}},
    "strategy": {"name": "diff2", "clients_per_round": 8, "args": {"lr": 0.1}},
    "faults": {"nonfinite": 0.4},
}


def test_diff2_workers_leave_out_and_list_the_drawn_clients():
    sc = parse_scenario(DIFF2)
    data = build_data(sc)
    model = build_initial_model(sc, data)
    x = flatten(dict(model.state_dict()), flat_spec(model))
    cids, rnd = list(range(8)), 1
    drawn = nonfinite_clients(sc.seed, rnd, cids, 0.4)
    assert 0 < len(drawn) < len(cids)
    grid = InProcessGrid([1, 2])
    with server_task_identity(grid.run_id):
        messages = [
            grid.create_message(
                encode_diff2_request(
                    scenario=sc.model_dump(mode="json"),
                    round=rnd,
                    x=x,
                    kind="restart",
                    radius=1.0,
                    client_ids=[c for c in cids if c % 2 == w],
                ),
                MESSAGE_TYPE_DIFF2,
                w + 1,
                "",
            )
            for w in range(2)
        ]
        replies = [decode_diff2_reply(r.content) for r in grid.send_and_receive(messages)]
    assert sorted(c for r in replies for c in r.failed) == sorted(drawn)
    kept = sorted(c for r in replies for c in r.client_ids)
    assert kept == sorted(set(cids) - drawn)
    clean = diff2_round(model, data, kept, x=x, x_prev=None, radius=1.0)  # the kept clients alone, no faults
    torch.testing.assert_close(sum(r.clipped_sum for r in replies), clean.clipped_sum)
    assert sum(r.rows for r in replies) == clean.rows
    assert sum(r.loss_sum for r in replies) == pytest.approx(clean.loss_sum)


def test_diff2_round_drops_a_nonfinite_contribution_and_the_reply_carries_the_list():
    sc = parse_scenario({**DIFF2, "faults": {}})
    data = build_data(sc)
    model = build_initial_model(sc, data)
    x = flatten(dict(model.state_dict()), flat_spec(model))
    sums = diff2_round(model, data, [0, 1, 2], x=x, x_prev=None, radius=1.0, nonfinite={1})
    assert sums.failed == [1] and sums.client_ids == [0, 2]
    assert torch.isfinite(sums.clipped_sum).all() and len(sums.num_examples) == 2
    reply = Diff2Reply(
        clipped_sum=sums.clipped_sum, grad_sum=sums.grad_sum, loss_sum=sums.loss_sum,
        clipped_rows=sums.clipped_rows, rows=sums.rows, client_ids=sums.client_ids,
        num_examples=sums.num_examples, failed=sums.failed,
    )  # fmt: skip
    with server_task_identity():
        back = decode_diff2_reply(encode_diff2_reply(reply))
    assert back.failed == [1] and back.client_ids == [0, 2]
    assert dataclasses.replace(back, clipped_sum=reply.clipped_sum, grad_sum=reply.grad_sum) == reply
