"""Sample-level DP-SGD in the cohort trainers: Opacus' PrivacyEngine (sequential) against torch.func (vectorised).

Oracle: the sequential path is Opacus itself (``PrivacyEngine.make_private`` with Opacus' Poisson sampler and noise
generator); the vectorised path draws the same batches and the same noise from the same generators, so both must
give the same clipped, noised updates. Also: σ = 0 with a large clip equals plain SGD on the same Poisson batches
(a hand loop), noise has the right scale, secure generators differ, and the engine reports ε every round.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from local_grid import LocalGrid, MemoryRecorder

from clients.dp_sgd import client_dp_generators
from fedsim.engine.cohort import train_cohort_sequential
from fedsim.engine.server import Engine
from fedsim.engine.vectorized import train_cohort_vectorized
from fedsim.models import build_model
from fedsim.privacy.sample_level import LocalSchedule
from fedsim.protocol import ClientTask, SampleDP, TrainConfig
from fedsim.scenario import parse_scenario

sys.path.insert(0, str(Path(__file__).parent))
from test_vectorized import data_with_sizes  # noqa: E402

SIZES = [13, 16, 5, 16, 29, 1, 8, 12]  # unequal: different q, steps and expected batch sizes; one single example


def _setup(sizes=SIZES, model_name="mlp"):
    data = data_with_sizes(sizes)
    model = build_model(model_name, {}, input_shape=(64,), num_classes=10, seed=0)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    tasks = [ClientTask(c, 100 + c) for c in range(len(sizes))]
    return data, model, theta, tasks


def _cfg(noise, clip=2.7, secure=False, **opt):
    return TrainConfig(
        epochs=2,
        batch_size=4,
        optimizer=opt.pop("name", "sgd"),
        optimizer_args=opt or {"lr": 0.1},
        sample_dp=SampleDP(max_norm=clip, noise_multiplier=noise, secure=secure),
    )


@pytest.mark.parametrize(
    "opt", [{"lr": 0.1}, {"lr": 0.05, "momentum": 0.9}, {"name": "adam", "lr": 0.01}], ids=["sgd", "mom", "adam"]
)
@pytest.mark.parametrize("noise", [0.0, 1.3])
def test_vectorised_dp_sgd_equals_opacus_privacy_engine_for_the_same_draws(noise, opt):
    data, model, theta, tasks = _setup()
    cfg = _cfg(noise, **opt)
    seq = train_cohort_sequential(model, theta, tasks, data, cfg)
    vec = train_cohort_vectorized(model, theta, tasks, data, cfg)
    assert seq.client_ids == vec.client_ids == [t.cid for t in tasks]
    assert seq.num_examples == vec.num_examples == SIZES
    for k in theta:
        torch.testing.assert_close(vec.weighted_delta_sum[k], seq.weighted_delta_sum[k], rtol=2e-4, atol=2e-5)
    finite = [(a, b) for a, b in zip(seq.train_loss, vec.train_loss, strict=True) if math.isfinite(a)]
    torch.testing.assert_close(torch.tensor(finite)[:, 1], torch.tensor(finite)[:, 0], rtol=1e-4, atol=1e-5)
    for name in ("clipped_fraction", "norm_p50", "signal_to_noise"):
        a, b = torch.tensor(seq.client_stats[name]), torch.tensor(vec.client_stats[name])
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, equal_nan=True)
    assert 0 < sum(seq.client_stats["clipped_fraction"]) / len(SIZES) < 1  # the clip bites, not everywhere
    # the model the worker reuses carries no Opacus hooks or per-sample state afterwards
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


def test_without_noise_and_clipping_dp_sgd_is_sgd_on_the_poisson_batches():
    """σ = 0 and a clip no gradient reaches: SGD on Opacus' batches, divided by int(n·q) instead of the batch."""
    data, model, theta, tasks = _setup(sizes=[13])
    cfg = _cfg(0.0, clip=1e6)
    seq = train_cohort_sequential(model, theta, tasks, data, cfg)
    sched = LocalSchedule(13, 4)
    sampling, _ = client_dp_generators(tasks[0].seed, secure=False)
    x, y = data.client_data(0)
    ref = build_model("mlp", {}, input_shape=(64,), num_classes=10, seed=0)
    for _ in range(cfg.epochs * sched.steps_per_epoch):
        idx = (torch.rand(13, generator=sampling) < sched.sample_rate).nonzero().reshape(-1)
        ref.zero_grad()
        if len(idx):
            loss = torch.nn.functional.cross_entropy(ref(x[idx]), y[idx], reduction="sum")
            loss.backward()
            with torch.no_grad():
                for p in ref.parameters():
                    p -= 0.1 * p.grad / sched.expected_batch_size
    for k, v in ref.state_dict().items():
        expected = 13 * (v - theta[k])  # the reply is the example-weighted delta
        torch.testing.assert_close(seq.weighted_delta_sum[k], expected, rtol=1e-4, atol=1e-6)


def test_noise_alone_has_std_sigma_c_over_the_expected_batch_on_one_step():
    """One step at q = 1 and lr 1: a noisy and a noise-free run draw the same batches, so their difference is the
    noise alone, Σ over 3 clients of n·(−N(0, σ²C²)/n) with n = int(n·q) = 400: std √3·σC."""
    data, model, theta, tasks = _setup(sizes=[400] * 3)
    cfg_noise = TrainConfig(
        epochs=1,
        batch_size=400,
        optimizer="sgd",
        optimizer_args={"lr": 1.0},
        sample_dp=SampleDP(max_norm=0.5, noise_multiplier=2.0, secure=False),
    )
    cfg_clean = TrainConfig(**{**cfg_noise.__dict__, "sample_dp": SampleDP(0.5, 0.0, secure=False)})
    noisy = train_cohort_vectorized(model, theta, tasks, data, cfg_noise)
    clean = train_cohort_vectorized(model, theta, tasks, data, cfg_clean)  # same batches: same sampler seeds
    diff = torch.cat([(noisy.weighted_delta_sum[k] - clean.weighted_delta_sum[k]).flatten() for k in theta])
    # Σ over 3 clients of 400·(−noise/400): std = √3 · σC
    d = diff.numel()
    expected = math.sqrt(3) * 2.0 * 0.5
    assert diff.std().item() == pytest.approx(expected, rel=4 / math.sqrt(d))


def test_secure_generators_differ_and_insecure_ones_repeat():
    a, b = client_dp_generators(7, secure=True)[1], client_dp_generators(7, secure=True)[1]
    assert not torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))
    c, d = client_dp_generators(7, secure=False)[1], client_dp_generators(7, secure=False)[1]
    assert torch.equal(torch.randn(8, generator=c), torch.randn(8, generator=d))
    e, f = client_dp_generators(7, secure=False)  # the batch sampling and noise streams are independent
    assert not torch.equal(torch.randn(8, generator=e), torch.randn(8, generator=f))


SMALL = {
    "name": "small-sample-dp",
    "seed": 1,
    "rounds": 3,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 20},
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "client": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.5}},
    "strategy": {"name": "fedavg", "clients_per_round": 10},
}


def run_engine(privacy, vectorize="auto"):
    sc = parse_scenario({**SMALL, "privacy": privacy, "engine": {"vectorize": vectorize}})
    rec = MemoryRecorder()
    engine = Engine(sc, rec, expected_workers=2)
    engine.run(LocalGrid([11, 22]))
    return rec, engine


def test_engine_runs_sample_level_dp_with_epsilon_and_clipping_in_every_row():
    privacy = {"level": "sample", "noise_multiplier": 1.0, "clip": 1.0, "insecure_seed": True, "accountants": ["rdp"]}
    privacy["release_diagnostics"] = True  # the clipping diagnostics are checked below
    rec, engine = run_engine(privacy)
    plan, spent = engine.privacy
    eps = [r["epsilon_rdp"] for r in rec.rows]
    assert eps == sorted(eps) and eps[0] > 0 and eps[-1] == pytest.approx(spent.epsilon["rdp"])
    for r in rec.rows:
        assert r["dp_noise_multiplier"] == 1.0 and 0.0 <= r["dp_clipped_fraction"] <= 1.0
        assert r["dp_norm_p10"] <= r["dp_norm_p50"] <= r["dp_norm_p90"]
    # the sequential (Opacus) path gives the same run
    seq, _ = run_engine(privacy, vectorize="off")
    for a, b in zip(rec.rows, seq.rows, strict=True):
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
    assert plan.steps_per_round == math.ceil(min(data_sizes(engine)) / 16)


def data_sizes(engine):
    from fedsim.engine.setup import build_data

    data = build_data(engine.scenario)
    return [data.num_examples(c) for c in range(engine.scenario.population.clients)]


def test_secure_sample_level_runs_differ():
    privacy = {"level": "sample", "noise_multiplier": 1.0, "accountants": ["rdp"]}
    a, _ = run_engine(privacy)
    b, _ = run_engine(privacy)
    assert [r["test_loss"] for r in a.rows] != [r["test_loss"] for r in b.rows]
