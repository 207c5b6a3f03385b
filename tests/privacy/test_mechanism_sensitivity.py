"""The released mechanisms against the noise multiplier their accountant is given, measured from outside.

Oracle: for neighbouring inputs (the adjacency the report states), run the server's mechanism twice with the same
noise seed, so the outputs differ by exactly the shift of the released tuple; measure each released component's
noise std empirically; then ‖shift / noise std‖ must not exceed 1/σ_accounted (the Gaussian mechanism with L2
sensitivity 1 and noise multiplier σ). Nothing here reuses the code's split formula.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedsim.gradcore.dp import seeded_generator
from strategies import ReducedUpdates
from strategies.dp import ClientLevelDP
from strategies.fedavg import FedAvg

D = 4096  # coordinates of the update: enough to measure its noise std to ~2 %
PARAMS = {"w": torch.zeros(D, dtype=torch.float64)}


def adaptive(cohort: int, sigma: float, *, sampling: str, seed: int = 0) -> ClientLevelDP:
    return ClientLevelDP(
        inner=FedAvg(clients_per_round=cohort, server_optimizer={"name": "sgd", "lr": 1.0}),
        population=10 * cohort,
        noise_multiplier=sigma,
        clip=1.0,
        generator=seeded_generator(seed),
        sampling=sampling,
        adaptive=True,
    )


def release(
    dp: ClientLevelDP, total: torch.Tensor, norms: list[float], noise: Any = None
) -> tuple[torch.Tensor, float, Any]:
    """(noised clipped sum, noised count) as released: read back from the new params and the new clip; and the
    noise stream after it. A fresh state (``dp.init``) unless ``noise`` continues an earlier stream."""
    state = dp.init(PARAMS)
    if noise is not None:
        state = state._replace(noise=noise)
    up = ReducedUpdates({"w": total}, float(len(norms)), len(norms), tuple(norms))
    out = dp.aggregate(state, PARAMS, up)
    s = dp.cohort
    noised_sum = out.params["w"] * s  # FedAvg with lr 1: θ' = θ + noised/s, θ = 0
    # C' = C exp(−η (b̄ − γ)) => b̄ = γ − ln(C'/C)/η, and the count is s·b̄ (up to a constant shift)
    b_bar = dp.target_quantile - math.log(out.state.clip / state.clip) / dp.clip_lr
    return noised_sum, s * b_bar, out.state.noise


def measured_stds(cohort: int, sigma: float, sampling: str) -> tuple[float, float]:
    """Empirical noise std of the released sum (one round, D coordinates) and count (2000 rounds of one stream)."""
    zero = torch.zeros(D, dtype=torch.float64)
    dp = adaptive(cohort, sigma, sampling=sampling, seed=11)
    noised, _, noise = release(dp, zero, [0.5] * 3)
    counts = []
    for _ in range(2000):
        _, count, noise = release(dp, zero, [0.5] * 3, noise)
        counts.append(count)
    return float(noised.std()), float(torch.tensor(counts, dtype=torch.float64).std())


def normalised_shift(cohort, sigma, sampling, before, after) -> float:
    """‖(Δsum/std_sum, Δcount/std_count)‖ between two neighbouring inputs (same noise seed)."""
    std_sum, std_count = measured_stds(cohort, sigma, sampling)
    s0, c0, _ = release(adaptive(cohort, sigma, sampling=sampling, seed=5), *before)
    s1, c1, _ = release(adaptive(cohort, sigma, sampling=sampling, seed=5), *after)
    d_sum = float(torch.linalg.vector_norm(s1 - s0))
    return math.hypot(d_sum / std_sum, (c1 - c0) / std_count)


def test_adaptive_poisson_add_one_client_costs_at_most_sigma():
    # Poisson sampling, add/remove-one: add a client at norm exactly C (its bit is 1) to three others.
    # σ = 1, cohort 20 -> σ_b = 1. Uncentred count: shift (C, 1) -> ‖·‖² = 0.75 + 1 = 1.75 > 1.
    cohort, sigma = 20, 1.0
    base = torch.zeros(D, dtype=torch.float64)
    base[0] = 0.3
    v = torch.zeros(D, dtype=torch.float64)
    v[1] = 1.0  # clipped update of norm exactly C = 1
    for added_norm in (1.0, 3.0):  # unclipped (b = 1) or clipped to C (b = 0)
        shift = normalised_shift(
            cohort, sigma, "poisson", (base, [0.3, 0.2, 2.0]), (base + v, [0.3, 0.2, 2.0, added_norm])
        )
        assert shift <= (1 / sigma) * 1.08, (added_norm, shift)


def test_adaptive_fixed_size_replace_one_client_costs_at_most_sigma_over_two():
    # Replace-one: a client at norm C with bit 1 replaced by one pointing the other way with bit 0: shift (2C, 1).
    # The fixed-size accountant is given σ/2 (sensitivity 2C), so the bound is 2/σ.
    cohort, sigma = 20, 1.0
    v = torch.zeros(D, dtype=torch.float64)
    v[1] = 1.0
    shift = normalised_shift(cohort, sigma, "fixed_size", (v, [1.0, 0.2]), (-v, [3.0, 0.2]))
    assert shift <= (2 / sigma) * 1.08, shift
