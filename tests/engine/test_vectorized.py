"""The vectorised cohort trainer against the sequential one (the oracle): same clients, same seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.data import FederatedData
from fedsim.engine.cohort import train_cohort_sequential
from fedsim.engine.protocol import ClientTask, TrainConfig
from fedsim.engine.vectorized import train_cohort_vectorized, vectorizable
from fedsim.models import build_model


def data_with_sizes(sizes, shape=(64,), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.rand(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    bounds = np.cumsum([0, *sizes])
    parts = tuple(np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    return FederatedData(x, y, x[:10], y[:10], parts, classes, shape)


SIZES = [13, 16, 5, 16, 29, 1, 8]  # unequal: different step counts and ragged last batches


@pytest.mark.parametrize(
    ("model_name", "shape", "opt"),
    [
        ("mlp", (64,), {"lr": 0.1}),
        ("mlp", (64,), {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}),
        ("mlp", (64,), {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
        ("cnn", (64,), {"lr": 0.05}),
        ("cnn", (40,), {"lr": 0.05, "momentum": 0.5}),
    ],
)
def test_vectorized_equals_sequential(model_name, shape, opt):
    data = data_with_sizes(SIZES, shape=shape)
    model = build_model(model_name, {}, input_shape=shape, num_classes=10, seed=0)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="sgd", optimizer_args=opt)
    tasks = [ClientTask(c, 100 + c) for c in range(len(SIZES))]
    seq = train_cohort_sequential(model, theta, tasks, data, cfg)
    vec = train_cohort_vectorized(model, theta, tasks, data, cfg)
    assert vec.client_ids == seq.client_ids and vec.num_examples == seq.num_examples
    assert vec.weight_sum == seq.weight_sum
    for k in theta:
        torch.testing.assert_close(vec.weighted_delta_sum[k], seq.weighted_delta_sum[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vec.train_loss, seq.train_loss, rtol=1e-5)


def test_what_cannot_be_vectorized_says_why():
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ok, why = vectorizable(bn, TrainConfig(1, 4, "sgd", {"lr": 0.1}))
    assert not ok and "BatchNorm" in why
    ok, why = vectorizable(nn.Linear(3, 3), TrainConfig(1, 4, "adam", {"lr": 0.1}))
    assert not ok and "adam" in why
    assert vectorizable(nn.Linear(3, 3), TrainConfig(1, 4, "sgd", {"lr": 0.1, "momentum": 0.9}))[0]
