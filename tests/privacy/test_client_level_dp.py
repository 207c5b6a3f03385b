"""Client-level DP: clipping on the worker (both cohort trainers), noise once on the sum, fixed denominator,
Poisson cohorts and adaptive clipping (no Ray, no Flower). The engine-level tests are in
tests/engine/test_engine_dp.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.engine.accumulate import CohortAccumulator
from fedsim.errors import ConfigError
from fedsim.gradcore import global_norm
from fedsim.gradcore.dp import seeded_generator
from fedsim.privacy.client_level import adaptive_noise_split, next_adaptive_clip
from fedsim.protocol import ClientClip
from strategies import ReducedUpdates
from strategies.dp import ClientLevelDP, poisson_sample
from strategies.fedavg import FedAvg

PARAMS = {"w": torch.zeros(3, 4), "b": torch.zeros(4)}


def fedavg(k=10):
    return FedAvg(clients_per_round=k, server_optimizer={"name": "sgd", "lr": 1.0})


def dp(k=10, sigma=1.0, clip=1.0, **kw):
    return ClientLevelDP(
        inner=fedavg(k),
        population=100,
        noise_multiplier=sigma,
        clip=clip,
        generator=seeded_generator(0),
        **kw,
    )


def reduced(total, n, norms=()):
    return ReducedUpdates(
        weighted_delta_sum=total, weight_sum=float(n), num_clients=n, update_norms=tuple(norms)
    )


def test_noise_once_on_the_sum_with_std_sigma_c_and_a_fixed_denominator():
    # zero updates from 7 clients, expected cohort 10: the new params are pure noise / 10, std σC/s
    s = dp(k=10, sigma=2.0, clip=0.5)
    zero = {k: torch.zeros_like(v) for k, v in PARAMS.items()}
    draws = []
    state = s.init(PARAMS)
    for _ in range(4000):
        out = s.aggregate(state, PARAMS, reduced(zero, 7))
        draws.append(torch.cat([v.flatten() for v in out.params.values()]))
        state = out.state  # the noise stream lives in the state
    x = torch.stack(draws).double()
    want = 2.0 * 0.5 / 10  # σ·C / s, independent of the 7 that replied
    se = want / math.sqrt(2 * x.numel())  # standard error of a std estimate
    assert abs(float(x.std()) - want) < 5 * se
    assert abs(float(x.mean())) < 5 * want / math.sqrt(x.numel())


def test_mean_is_sum_plus_noise_over_expected_cohort():
    s = dp(k=4, sigma=1e-12)  # noise negligible: the step is exactly the clipped sum / s
    total = {"w": torch.full((3, 4), 0.4), "b": torch.full((4,), -0.8)}
    out = s.aggregate(s.init(PARAMS), PARAMS, reduced(total, 2, [0.3, 0.5]))
    torch.testing.assert_close(out.params["w"], torch.full((3, 4), 0.1))
    torch.testing.assert_close(out.params["b"], torch.full((4,), -0.2))
    assert out.metrics["dp_clipped_fraction"] == 0.0 and out.metrics["dp_clients"] == 2


def test_a_round_with_no_client_still_releases_noise():
    s = dp()
    zero = {k: torch.zeros_like(v) for k, v in PARAMS.items()}
    out = s.aggregate(s.init(PARAMS), PARAMS, reduced(zero, 0))
    assert any(float(v.abs().sum()) > 0 for v in out.params.values())


def test_poisson_cohorts_include_each_client_with_rate_q():
    rng = np.random.default_rng(0)
    counts = np.zeros(100)
    sizes = []
    for _ in range(2000):
        ids = poisson_sample(np.arange(100), 0.1, rng)
        counts[list(ids)] += 1
        sizes.append(len(ids))
    assert abs(np.mean(sizes) - 10) < 0.2 and np.std(sizes) > 2  # Binomial(100, 0.1): sd 3
    assert abs(counts.mean() / 2000 - 0.1) < 0.005
    plan = dp().configure_round(dp().init(PARAMS), round=1, available=np.arange(100), rng=rng)
    assert plan.config == {"clip": 1.0}


def test_fixed_size_sampling_draws_exactly_the_cohort():
    s = dp(k=10, sampling="fixed_size")
    plan = s.configure_round(s.init(PARAMS), round=1, available=np.arange(100), rng=np.random.default_rng(1))
    assert len(plan.client_ids) == 10 and len(set(plan.client_ids)) == 10


def test_adaptive_clip_moves_toward_the_quantile_and_splits_the_noise():
    # Andrew et al.: C <- C exp(-η (b̄ - γ)); everyone unclipped (b̄=1) shrinks C, nobody (b̄=0) grows it
    assert next_adaptive_clip(1.0, 1.0, target_quantile=0.5, lr=0.2) == pytest.approx(math.exp(-0.1))
    assert next_adaptive_clip(1.0, 0.0, target_quantile=0.5, lr=0.2) == pytest.approx(math.exp(0.1))
    # σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2): σ 1, σ_b 5 -> (1 - 0.01)^(-1/2)
    assert adaptive_noise_split(1.0, 5.0) == pytest.approx(0.99**-0.5)
    with pytest.raises(ConfigError, match="privacy.count_noise_multiplier"):
        adaptive_noise_split(1.0, 0.5)
    s = dp(k=100, sigma=0.01, adaptive=True, count_noise=0.01)  # count noise 1e-4 on b̄: negligible
    state = s.init(PARAMS)
    zero = {k: torch.zeros_like(v) for k, v in PARAMS.items()}
    for _ in range(30):  # every norm 0.01 <= C: the clip shrinks geometrically toward them
        state = s.aggregate(state, PARAMS, reduced(zero, 100, [0.01] * 100)).state
    assert state.clip == pytest.approx(math.exp(-0.1 * 30), rel=1e-3)


def _stack(deltas):
    return {k: torch.stack([d[k] for d in deltas]) for k in deltas[0]}


@pytest.mark.parametrize("mode", ["global", "independent", "uniform", "dimension"])
@pytest.mark.parametrize("normalize", [False, True])
def test_worker_clipping_is_the_same_on_both_paths_and_bounded(mode, normalize):
    g = torch.Generator().manual_seed(3)
    theta = {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g)}
    news = [
        {k: v + s * torch.randn(v.shape, generator=g) for k, v in theta.items()} for s in (0.01, 1.0, 3.0)
    ]
    clip = ClientClip(max_norm=0.7, mode=mode, normalize_layers=normalize)
    seq = CohortAccumulator(theta, clip)
    for cid, new in enumerate(news):
        seq.add(cid, new, num_examples=10 + cid, mean_loss=0.0)
    vec = CohortAccumulator(theta, clip)
    vec.add_stacked([0, 1, 2], _stack(news), [10, 11, 12], [0.0] * 3)
    a, b = seq.finish(), vec.finish()
    for k in theta:
        torch.testing.assert_close(a.weighted_delta_sum[k], b.weighted_delta_sum[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.update_norms, b.update_norms, rtol=1e-6)
    # the norms the clip saw: the update's, or after layer normalisation √(number of layers) = √2
    want_norms = [
        math.sqrt(2) if normalize else float(global_norm({k: n[k] - theta[k] for k in theta})) for n in news
    ]
    np.testing.assert_allclose(a.update_norms, want_norms, rtol=1e-6)
    assert a.weight_sum == 33  # examples are still counted; the sum itself is unweighted:
    # with one client, the sum is that client's clipped update, norm <= C
    one = CohortAccumulator(theta, clip)
    one.add(0, news[2], num_examples=50, mean_loss=0.0)
    assert float(global_norm(one.finish().weighted_delta_sum)) <= 0.7 * (1 + 1e-6)


def test_no_clipping_without_privacy_keeps_example_weights():
    theta = {"w": torch.zeros(2)}
    acc = CohortAccumulator(theta)
    acc.add(0, {"w": torch.ones(2) * 10}, num_examples=3, mean_loss=0.0)
    torch.testing.assert_close(acc.finish().weighted_delta_sum["w"], torch.full((2,), 30.0))


def test_every_round_gets_an_upper_bound_on_epsilon_so_far():
    from fedsim.privacy.accounting import Mechanism, epsilon
    from fedsim.privacy.plan import spend
    from strategies.dp import epsilon_every_round

    mech = Mechanism(noise_multiplier=1.0, sample_rate=0.05, steps=250)
    spent = spend(mech, 1e-5, ("rdp",), max_points=10)
    per_round = epsilon_every_round(spent)
    assert sorted(per_round) == list(range(1, 251))
    for r in (1, 7, 25, 26, 133, 250):
        exact = epsilon("rdp", Mechanism(1.0, 0.05, r), 1e-5)
        assert per_round[r]["rdp"] >= exact - 1e-9
        if r in spent.rounds_at:
            assert per_round[r]["rdp"] == pytest.approx(exact, rel=1e-9)
