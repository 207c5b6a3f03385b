"""The vectorised cohort trainer against the sequential one (the oracle): same clients, same seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.data import FederatedData
from fedsim.engine.cohort import train_cohort_sequential
from fedsim.engine.vectorized import train_cohort_vectorized, vectorizable
from fedsim.models import build_model
from fedsim.protocol import ClientTask, TrainConfig


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
        ("simple_cnn", (3, 8, 8), {"lr": 0.05}),
        ("mlp", (64,), {"name": "adam", "lr": 0.01, "weight_decay": 1e-3}),
        # eps 1e-4, not 1e-8: with a tiny eps an element whose gradient is ~1e-8 (a dead unit) turns float32
        # rounding differences between batched and single kernels into an O(lr) step (measured 3e-3 on one of 8192
        # elements); a larger eps keeps Adam well conditioned so the comparison tests our code, not that.
        ("cnn", (64,), {"name": "adamw", "lr": 0.01, "eps": 1e-4}),
        ("mlp", (64,), {"name": "scale", "lr": 0.01}),  # routed by layer role
        ("cnn", (64,), {"name": "swan", "lr": 0.01}),  # matrix ops on conv weights
        ("mlp", (64,), {"name": "adam8bit", "lr": 0.01}),
    ],
)
def test_vectorized_equals_sequential(model_name, shape, opt):
    data = data_with_sizes(SIZES, shape=shape)
    model = build_model(model_name, {}, input_shape=shape, num_classes=10, seed=0)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    opt = dict(opt)
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer=opt.pop("name", "sgd"), optimizer_args=opt)
    tasks = [ClientTask(c, 100 + c) for c in range(len(SIZES))]
    assert vectorizable(model, cfg)[0]
    seq = train_cohort_sequential(model, theta, tasks, data, cfg)
    vec = train_cohort_vectorized(model, theta, tasks, data, cfg)
    assert vec.client_ids == seq.client_ids and vec.num_examples == seq.num_examples
    assert vec.weight_sum == seq.weight_sum
    for k in theta:
        got, want = vec.weighted_delta_sum[k], seq.weighted_delta_sum[k]
        if cfg.optimizer == "swan":
            # SWAN whitens each gradient matrix (Newton-Schulz), which amplifies float32 differences between batched
            # and single kernels by the matrix's condition number: elementwise they reach 3e-4 on some CPUs, so it is
            # held to a per-tensor relative error instead (measured <= 3.3e-5).
            assert float((got - want).norm() / want.norm()) < 2e-4, k
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vec.train_loss, seq.train_loss, rtol=1e-5)


def test_what_cannot_be_vectorized_says_why():
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ok, why = vectorizable(bn, TrainConfig(1, 4, "sgd", {"lr": 0.1}))
    assert not ok and "BatchNorm" in why
    ok, why = vectorizable(
        nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)), TrainConfig(1, 4, "sgd", {"lr": 0.1})
    )
    assert not ok and "dropout" in why
    assert vectorizable(
        nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0)), TrainConfig(1, 4, "sgd", {"lr": 0.1})
    )[0]
    assert vectorizable(nn.Linear(3, 3), TrainConfig(1, 4, "sgd", {"lr": 0.1, "momentum": 0.9}))[0]


def test_memory_budget_chunks_the_stack_without_changing_results(monkeypatch):
    import fedsim.engine.vectorized as vec_mod
    from fedsim.engine.memory import client_footprint_bytes

    sizes = [8] * 9 + [5] * 4  # two buckets (2 and 4 steps at batch 4... with 2 epochs)
    data = data_with_sizes(sizes)
    model = build_model("mlp", {}, input_shape=(64,), num_classes=10, seed=0)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    tasks = [ClientTask(c, 7 * c) for c in range(len(sizes))]
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="sgd", optimizer_args={"lr": 0.1, "momentum": 0.9})
    whole = train_cohort_vectorized(model, theta, tasks, data, cfg)

    per_client = client_footprint_bytes(model, 4, (64,), optimizer_slots=1)
    stacked: list[int] = []
    real = vec_mod.train_chunk
    monkeypatch.setattr(
        vec_mod, "train_chunk", lambda *a, **k: (stacked.append(a[4].shape[0]), real(*a, **k))[1]
    )
    budget = TrainConfig(**{**cfg.__dict__, "memory_budget_bytes": 3 * per_client + 1})
    chunked = train_cohort_vectorized(model, theta, tasks, data, budget)

    assert stacked == [3, 3, 3, 3, 1]  # 9 clients of one step count, then 4 of the other, never more than 3
    assert chunked.client_ids == whole.client_ids == list(range(len(sizes)))
    for k in theta:
        torch.testing.assert_close(
            chunked.weighted_delta_sum[k], whole.weighted_delta_sum[k], rtol=1e-5, atol=1e-6
        )


def test_a_client_with_non_finite_data_is_left_out_and_the_others_are_untouched():
    data = data_with_sizes([6, 6, 6])
    data.train_x[6:12] = float("nan")  # client 1
    model = build_model("mlp", {}, input_shape=(64,), num_classes=10, seed=0)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=4, optimizer="sgd", optimizer_args={"lr": 0.1})
    tasks = [ClientTask(c, c) for c in range(3)]
    vec = train_cohort_vectorized(model, theta, tasks, data, cfg)
    seq = train_cohort_sequential(model, theta, tasks, data, cfg)
    assert vec.failed == seq.failed == [1]
    assert vec.client_ids == seq.client_ids == [0, 2]
    for k in theta:
        torch.testing.assert_close(vec.weighted_delta_sum[k], seq.weighted_delta_sum[k], rtol=1e-4, atol=1e-5)


def test_activation_estimate_counts_every_layer_output():
    from fedsim.engine.memory import activation_bytes_per_example, chunk_size

    model = build_model("mlp", {"hidden": [32]}, input_shape=(64,), num_classes=10)
    # Flatten (64) + Linear (32) + ReLU (32) + Linear (10) float32 outputs for one example.
    assert activation_bytes_per_example(model, (64,)) == (64 + 32 + 32 + 10) * 4
    assert chunk_size(100, 1000) == 10 and chunk_size(100, 50) == 1 and chunk_size(100, None) > 10**9


def test_batch_plan_reads_the_sequential_paths_batches():
    """Each client's steps are clients.local_sgd's: one randperm per epoch from the task's generator, cut every B;
    a short last batch is padded with the client's first row and masked."""
    from fedsim.engine.vectorized import batch_plan

    parts = [np.arange(40, 53), np.arange(3, 19), np.arange(60, 74)]  # 13, 16, 14 examples: 4 steps of 4 each
    tasks = [ClientTask(c, 10 + c) for c in range(3)]
    cfg = TrainConfig(epochs=3, batch_size=4, optimizer="sgd", optimizer_args={"lr": 0.1})
    rows, mask = batch_plan(parts, tasks, cfg)
    assert rows.shape == mask.shape == (3, 12, 4)
    for i, (part, task) in enumerate(zip(parts, tasks, strict=True)):
        gen, steps = torch.Generator().manual_seed(task.seed), []
        for _ in range(cfg.epochs):
            order = torch.randperm(len(part), generator=gen)
            steps += [order[s : s + 4] for s in range(0, len(part), 4)]
        for s, idx in enumerate(steps):
            assert rows[i, s, : len(idx)].tolist() == part[idx.numpy()].tolist()
            assert rows[i, s, len(idx) :].tolist() == [part[0]] * (4 - len(idx))
            assert mask[i, s].tolist() == [1.0] * len(idx) + [0.0] * (4 - len(idx))


def test_vectorized_training_does_not_import_torch_dynamo():
    """torch.func.grad imports torch._dynamo (~1 s of a short run's start-up); the vectorised path does without."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from tests.engine.test_vectorized import data_with_sizes\n"
        "from fedsim.protocol import ClientTask, TrainConfig\n"
        "from fedsim.engine.vectorized import train_cohort_vectorized\n"
        "from fedsim.models import build_model\n"
        "m = build_model('mlp', {}, input_shape=(64,), num_classes=10, seed=0)\n"
        "cfg = TrainConfig(epochs=1, batch_size=4, optimizer='sgd', optimizer_args={'lr': 0.1})\n"
        "train_cohort_vectorized(m, m.state_dict(), [ClientTask(0, 1), ClientTask(1, 2)], "
        "data_with_sizes([6, 6]), cfg)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
