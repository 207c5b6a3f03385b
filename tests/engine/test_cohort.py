"""The sequential cohort trainer against a hand-written loop (the independent oracle) and its fault rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clients.local_sgd import train_local
from fedsim.data import FederatedData
from fedsim.engine.cohort import train_cohort_sequential
from fedsim.protocol import ClientTask, TrainConfig


def make_data(n_clients=3, bad_client=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    if bad_client is not None:
        x[bad_client * 10] = float("inf")
    import numpy as np

    parts = tuple(np.arange(i * 10, (i + 1) * 10) for i in range(n_clients))
    return FederatedData(x, y, x[:5], y[:5], parts, 3, (5,))


def test_weighted_sum_matches_a_plain_loop():
    data = make_data()
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="sgd", optimizer_args={"lr": 0.1})
    tasks = [ClientTask(0, 11), ClientTask(2, 13)]
    res = train_cohort_sequential(model, theta, tasks, data, cfg)

    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in tasks:
        m = nn.Linear(5, 3)
        m.load_state_dict(theta)
        x, y = data.client_data(t.cid)
        train_local(
            m,
            x,
            y,
            epochs=2,
            batch_size=4,
            optimizer="sgd",
            optimizer_args={"lr": 0.1},
            generator=torch.Generator().manual_seed(t.seed),
        )
        for k, v in m.state_dict().items():
            expected[k] += 10 * (v - theta[k])
    for k in theta:
        torch.testing.assert_close(res.weighted_delta_sum[k], expected[k], rtol=1e-5, atol=1e-6)
    assert res.weight_sum == 20 and res.client_ids == [0, 2] and res.num_examples == [10, 10]
    assert all(l > 0 for l in res.train_loss)


def test_a_client_with_non_finite_update_is_left_out():
    data = make_data(bad_client=1)
    model = nn.Linear(5, 3)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=4, optimizer="sgd", optimizer_args={"lr": 0.1})
    res = train_cohort_sequential(model, theta, [ClientTask(0, 1), ClientTask(1, 2)], data, cfg)
    assert res.failed == [1] and res.client_ids == [0] and res.weight_sum == 10
    assert all(torch.isfinite(v).all() for v in res.weighted_delta_sum.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_matches_cpu():
    data = make_data()
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="sgd", optimizer_args={"lr": 0.1})
    torch.manual_seed(0)
    cpu_model = nn.Linear(5, 3)
    theta = {k: v.clone() for k, v in cpu_model.state_dict().items()}
    tasks = [ClientTask(0, 11), ClientTask(1, 12)]
    on_cpu = train_cohort_sequential(cpu_model, theta, tasks, data, cfg)
    on_gpu = train_cohort_sequential(nn.Linear(5, 3).cuda(), theta, tasks, data, cfg)
    for k in theta:
        assert on_gpu.weighted_delta_sum[k].device.type == "cpu"
        torch.testing.assert_close(
            on_gpu.weighted_delta_sum[k], on_cpu.weighted_delta_sum[k], rtol=1e-4, atol=1e-5
        )
