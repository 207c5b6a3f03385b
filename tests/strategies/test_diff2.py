"""DIFF2-GD's core (``strategies.diff2``): the spec's cases, DP-GD at T = 1, the noise variance law, validation."""

from __future__ import annotations

import math

import pytest
import torch

from fedsim.errors import ConfigError
from fedsim.gradcore.dp import seeded_generator
from fedsim.privacy.accounting import Mechanism, epsilon
from strategies.diff2 import (
    DIFFERENCE,
    RESTART,
    Diff2Config,
    clipped_mean,
    composed_mechanisms,
    epsilon_rdp,
    privacy_mechanisms,
    run_diff2,
    run_dp_gd,
)

F64 = torch.float64
A = torch.tensor([1.0, 3.0], dtype=F64)


def quadratic_clients():
    """f = ½xᵀdiag(1,3)x split over 2 clients: client 0 holds ℓ_z = ½xᵀdiag(a_z)x for two examples whose mean is
    diag(1,3), client 1 holds one example with diag(1,3); the mean of client means is ∇f = diag(1,3)x."""
    c0 = torch.tensor([[0.5, 2.0], [1.5, 4.0]], dtype=F64)
    return [lambda x: c0 * x, lambda x: A.expand(1, 2) * x]


@pytest.mark.parametrize("restart_every", [1, 2, 3, 4, 7])
def test_without_noise_or_clipping_v_is_the_gradient_for_any_T(restart_every):
    cfg = Diff2Config(lr=0.2, restart_every=restart_every, clip1=math.inf, clip2=math.inf)
    x0 = torch.tensor([1.0, -1.0], dtype=F64)
    trace = run_diff2(cfg, x0, quadratic_clients(), 8, generator=seeded_generator(0))
    for r in range(1, 9):
        torch.testing.assert_close(trace.estimates[r - 1], A * trace.iterates[r - 1], rtol=0, atol=1e-14)
    # Oracle: closed-form GD, x_8 = (1 − ηa)^8 x_0 = [0.8^8, −0.4^8] = [0.16777216, −0.00065536] (spec's numbers).
    torch.testing.assert_close(
        trace.iterates[8], torch.tensor([0.8**8, -(0.4**8)], dtype=F64), rtol=0, atol=1e-14
    )
    assert trace.iterates[8].tolist() == pytest.approx([0.167772, -0.000655], abs=5e-7)


def test_large_finite_clips_are_a_no_op():
    cfg = Diff2Config(lr=0.2, restart_every=4, clip1=1e6, clip2=1e6)
    trace = run_diff2(
        cfg, torch.tensor([1.0, -1.0], dtype=F64), quadratic_clients(), 8, generator=seeded_generator(0)
    )
    torch.testing.assert_close(
        trace.iterates[8], torch.tensor([0.8**8, -(0.4**8)], dtype=F64), rtol=0, atol=1e-13
    )
    assert [i.kind for i in trace.rounds] == [
        RESTART,
        DIFFERENCE,
        DIFFERENCE,
        DIFFERENCE,
    ] * 2  # (r−1) mod T == 0


def test_restart_every_one_is_dp_gd_with_the_same_noise_draws():
    clients = quadratic_clients()
    x0 = torch.tensor([3.0, -2.0], dtype=F64)
    cfg = Diff2Config(
        lr=0.1, restart_every=1, clip1=1.5, clip2=0.7, noise_multiplier1=0.8, noise_multiplier2=5.0
    )
    diff2 = run_diff2(cfg, x0, clients, 10, generator=seeded_generator(7))
    dpgd = run_dp_gd(x0, clients, 10, lr=0.1, clip=1.5, noise_multiplier=0.8, generator=seeded_generator(7))
    for a, b in zip(diff2.iterates, dpgd.iterates, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(i.kind == RESTART for i in diff2.rounds)
    assert not torch.equal(
        diff2.iterates[-1],
        run_dp_gd(
            x0, clients, 10, lr=0.1, clip=1.5, noise_multiplier=0.8, generator=seeded_generator(8)
        ).iterates[-1],
    )  # the noise is really there


def test_error_variance_is_sigma1_squared_plus_the_difference_noises_since_the_restart():
    """Linear per-example gradients g_z(x) = x − c_z (never clipped here), so v_r − ∇f(x_{r−1}) is exactly the sum
    of the noises the server added since the last restart (once per round, on the aggregate): per coordinate N(0, s_1² + Σ_s s_{2,s}²), given the stds
    reported. Over d coordinates the mean square / that variance has relative sd √(2/d) ≈ 0.014 at d = 10 000;
    the tolerance is 5 sd (0.07)."""
    d, n = 10_000, (50, 80)
    gen = torch.Generator().manual_seed(1)
    centres = [torch.randn(k, d, generator=gen, dtype=F64) * 0.01 for k in n]
    clients = [lambda x, c=c: x - c for c in centres]
    cfg = Diff2Config(
        lr=0.3, restart_every=4, clip1=2e3, clip2=1.5, noise_multiplier1=0.05, noise_multiplier2=1.0
    )
    x0 = torch.full((d,), 0.5, dtype=F64)
    trace = run_diff2(cfg, x0, clients, 9, generator=seeded_generator(3))
    grad_f = lambda x: x - sum(c.mean(0) for c in centres) / len(centres)  # noqa: E731
    # radii stay far below the per-example norms' clip: nothing was clipped
    assert (
        max(torch.linalg.vector_norm(trace.iterates[r] - c, dim=1).max() for r in range(9) for c in centres)
        < 2e3
    )
    expected_var = 0.0
    for r, info in enumerate(trace.rounds, start=1):
        expected_var = info.noise_std**2 + (0.0 if info.kind == RESTART else expected_var)
        err = trace.estimates[r - 1] - grad_f(trace.iterates[r - 1])
        assert float(err.pow(2).mean()) / expected_var == pytest.approx(1.0, abs=0.07), r
    # the formula was exercised: the accumulated difference noise is not negligible against σ1's share
    s1 = trace.rounds[0].noise_std
    # noise once on the aggregate: std = σ1·C1/(P·n_min), P = 2 clients, n_min = 50 (hand-worked: 0.05·2000/100 = 1)
    assert trace.rounds[0].noise_std == pytest.approx(0.05 * 2e3 / (2 * 50))
    assert sum(i.noise_std**2 for i in trace.rounds[1:4]) > 0.5 * s1**2


def test_zero_step_gives_zero_radius_no_noise_and_no_nan():
    # start at the optimum with no restart noise: v_1 = 0, x_1 = x_0, so round 2's radius C2·‖x_1 − x_0‖ = 0
    cfg = Diff2Config(
        lr=0.2, restart_every=4, clip1=1.0, clip2=1.0, noise_multiplier1=0.0, noise_multiplier2=3.0
    )
    trace = run_diff2(cfg, torch.zeros(2, dtype=F64), quadratic_clients(), 4, generator=seeded_generator(0))
    for info in trace.rounds[1:]:
        assert info.kind == DIFFERENCE and info.radius == 0.0 and info.noise_std == 0.0
    assert all(torch.isfinite(x).all() and not x.any() for x in trace.iterates)
    zero = clipped_mean(torch.zeros(3, 2, dtype=F64), 0.0)
    assert torch.equal(zero, torch.zeros(2, dtype=F64))
    assert torch.equal(clipped_mean(torch.zeros(3, 2, dtype=F64), 1.0), torch.zeros(2, dtype=F64))


def test_clipped_mean_bounds_each_row():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=F64)  # norms 5, 0.5, 0 (hand-worked)
    torch.testing.assert_close(clipped_mean(g, 1.0), torch.tensor([0.9, 1.2], dtype=F64) / 3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"restart_every": 0}, "strategy.args.restart_every"),
        ({"restart_every": 2.0}, "strategy.args.restart_every"),
        ({"clip1": 0.0}, "strategy.args.clip1"),
        ({"clip2": -1.0}, "strategy.args.clip2"),
        ({"lr": 0.0}, "strategy.args.lr"),
        ({"lr": -0.1}, "strategy.args.lr"),
        ({"lr": math.nan}, "strategy.args.lr"),
        ({"noise_multiplier2": -1.0}, "strategy.args.noise_multiplier2"),
        ({"clip1": math.inf, "noise_multiplier1": 1.0}, "strategy.args.clip1"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_field(kwargs, field):
    base = {"lr": 0.1, "restart_every": 4, "clip1": 1.0, "clip2": 1.0}
    with pytest.raises(ConfigError) as err:
        Diff2Config(**{**base, **kwargs})
    assert err.value.field == field
    assert str(err.value).startswith(f"{field} must be")


def test_mechanisms_compose_per_distinct_sigma():
    cfg = Diff2Config(
        lr=0.1, restart_every=4, clip1=1.0, clip2=1.0, noise_multiplier1=2.0, noise_multiplier2=3.0
    )
    kinds = [m.kind for m in privacy_mechanisms(cfg, 9)]
    assert kinds == [RESTART, DIFFERENCE, DIFFERENCE, DIFFERENCE] * 2 + [RESTART]
    assert composed_mechanisms(cfg, 9) == [Mechanism(2.0, 1.0, 3), Mechanism(3.0, 1.0, 6)]
    # Oracle: with one σ the composition is the project's own accountant on one mechanism.
    same = Diff2Config(
        lr=0.1, restart_every=4, clip1=1.0, clip2=1.0, noise_multiplier1=2.0, noise_multiplier2=2.0
    )
    assert epsilon_rdp(same, 9, 1e-5) == pytest.approx(
        epsilon("rdp", Mechanism(2.0, 1.0, 9), 1e-5), rel=1e-12
    )
    eps = epsilon_rdp(cfg, 9, 1e-5)
    assert epsilon("rdp", Mechanism(3.0, 1.0, 9), 1e-5) < eps < epsilon("rdp", Mechanism(2.0, 1.0, 9), 1e-5)
    with pytest.raises(ConfigError) as err:
        composed_mechanisms(
            Diff2Config(lr=0.1, restart_every=4, clip1=1.0, clip2=1.0, noise_multiplier1=1.0), 2
        )
    assert err.value.field == "strategy.args.noise_multiplier2"


def test_zero_out_one_example_moves_the_release_by_at_most_one_over_sigma_noise_stds():
    """Zero-out adjacency (the one privacy.json states): one example's gradient replaced by zero, sizes fixed.
    Oracle: the same noise seed for both inputs, so the outputs differ by the shift itself; the noise std is
    measured from the output (4096 coordinates); shift/std must not exceed 1/σ, the σ the accountant gets."""
    from strategies.diff2 import private_mean

    d, sigma, clip = 4096, 0.8, 1.0
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(n, d, generator=g, dtype=torch.float64) * 3 for n in (3, 7)]  # all rows clipped
    zeroed = [grads[0].clone(), grads[1]]
    zeroed[0][1] = 0.0  # the smallest client loses one example's contribution, keeps its size
    a, _ = private_mean(grads, clip, sigma, generator=seeded_generator(9))
    b, _ = private_mean(zeroed, clip, sigma, generator=seeded_generator(9))
    noise_only, _ = private_mean([torch.zeros(n, d, dtype=torch.float64) for n in (3, 7)], clip, sigma,
                                 generator=seeded_generator(1))  # fmt: skip
    shift = float(torch.linalg.vector_norm(a - b)) / float(noise_only.std())
    assert shift <= (1 / sigma) * 1.05, shift
