"""Client-level DP transforms: the privacy spec's worked case, the clipping bound as a property, noise statistics.

Oracles: the spec's hand-worked case (printed to 4 decimals) and its closed forms; for stacked cohorts, the same
transform applied one client at a time; for the noise, the generator's own stream and the sampling distribution of
the standard deviation.

``add_gaussian_noise`` keeps its generator in its state, so it joins the contracts' determinism and checkpoint
tests (``tests/contracts/test_transform_contracts.py``) but not the stacked-cohort one: a stacked cohort draws one
``[K, ...]`` tensor per name where a client loop draws each client's tensors in turn (same distribution, different
order).
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import assume, example, given, settings
from update_strategies import ZEROS, ZEROS_BATCHED, updates

from fedsim.gradcore import (
    add_gaussian_noise,
    chain,
    clip_by_global_norm,
    clip_layers_independent,
    clip_layers_pelikan,
    normalize_layers,
    secure_generator,
    seeded_generator,
)
from fedsim.gradcore.dp import gaussian_noise_state

SETTINGS = settings(max_examples=50, deadline=None)
REL = 1e-5  # float32 rounding of the clipped entries (the factors themselves are computed in float64)

CLIPS = {
    "independent_uniform": lambda c, bd=0: clip_layers_independent(c, batch_dims=bd),
    "independent_dimension": lambda c, bd=0: clip_layers_independent(c, rule="dimension", batch_dims=bd),
    "pelikan_uniform": lambda c, bd=0: clip_layers_pelikan(c, batch_dims=bd),
    "pelikan_dimension": lambda c, bd=0: clip_layers_pelikan(c, rule="dimension", batch_dims=bd),
    "normalized_pelikan": lambda c, bd=0: chain(
        normalize_layers(batch_dims=bd), clip_layers_pelikan(c, batch_dims=bd)
    ),
}


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def step(tx, grads):
    out, _ = tx.update(grads, tx.init(grads), None)
    return out


def norm64(tree, batch_dims: int = 0) -> torch.Tensor:
    """Oracle total norm: float64, independent of the transforms' helpers."""
    flat = [x.double().reshape(*x.shape[:batch_dims], -1) for x in tree.values()]
    return torch.linalg.vector_norm(torch.cat(flat, dim=-1), dim=-1)


def close4(actual: torch.Tensor, printed: list[float]) -> None:
    """Equal to the spec's 4-decimal numbers (half a unit in the last place, plus rounding slack)."""
    torch.testing.assert_close(actual, torch.tensor(printed, dtype=actual.dtype), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------------------------
# The worked case: C = 1, layers [3, 4, 0] and [0.1], every clipping mode computed by hand
# --------------------------------------------------------------------------------------------------------------

WORKED = {"a": t(3, 4, 0), "b": t(0.1)}


def test_worked_case_global():
    out = step(clip_by_global_norm(1.0), WORKED)
    close4(out["a"], [0.5999, 0.7998, 0.0])
    close4(out["b"], [0.0200])
    total = math.sqrt(25.01)  # closed form: every entry divided by ||Δ|| = √(9 + 16 + 0.01)
    torch.testing.assert_close(out["a"], t(3 / total, 4 / total, 0))
    torch.testing.assert_close(out["b"], t(0.1 / total))


def test_worked_case_pelikan_uniform():
    out = step(clip_layers_pelikan(1.0), WORKED)
    close4(out["a"], [0.4243, 0.5657, 0.0])
    close4(out["b"], [0.7071])
    # closed form: each of L = 2 layers gets norm C/√2; the small layer is scaled up from 0.1 to 1/√2
    torch.testing.assert_close(out["a"], t(0.6, 0.8, 0) / math.sqrt(2))
    torch.testing.assert_close(out["b"], t(1 / math.sqrt(2)))
    torch.testing.assert_close(norm64(out), t(1.0)[0])


def test_worked_case_pelikan_dimension():
    out = step(clip_layers_pelikan(1.0, rule="dimension"), WORKED)
    close4(out["a"], [0.5196, 0.6928, 0.0])
    close4(out["b"], [0.5])
    # closed form: d_a = 3, d_b = 1, d = 4, so the layer norms are √(3/4) and √(1/4) = 0.5
    torch.testing.assert_close(out["a"], t(0.6, 0.8, 0) * math.sqrt(0.75))
    torch.testing.assert_close(out["b"], t(0.5))
    torch.testing.assert_close(norm64(out), t(1.0)[0])


def test_worked_case_independent():
    # closed form: C_l = 1/√2 ≈ 0.7071 for both layers; ||a|| = 5 is clipped to it, ||b|| = 0.1 is below it
    out = step(clip_layers_independent(1.0), WORKED)
    torch.testing.assert_close(out["a"], t(0.6, 0.8, 0) / math.sqrt(2))
    assert torch.equal(out["b"], WORKED["b"])
    # by dimension: C_a = √(3/4) ≈ 0.866 (a clipped to it), C_b = 0.5 (b unchanged)
    out = step(clip_layers_independent(1.0, rule="dimension"), WORKED)
    torch.testing.assert_close(out["a"], t(0.6, 0.8, 0) * math.sqrt(0.75))
    assert torch.equal(out["b"], WORKED["b"])


def test_pelikan_is_a_no_op_below_the_bound_and_rescales_above_it():
    # Values clearly on one side of ||Δ|| = C: the boundary itself depends on the machine's float rounding.
    small = {"a": t(0.3, 0.4, 0), "b": t(0.1)}  # ||Δ|| = √0.26 < 1
    for rule in ("uniform", "dimension"):
        out = step(clip_layers_pelikan(1.0, rule=rule), small)
        assert all(torch.equal(out[k], small[k]) for k in small)
    # ||Δ|| = √(4·0.36) = 1.2 > 1: every layer gets C/√L = 1/√2 (closed form)
    out = step(clip_layers_pelikan(1.0), {"a": t(0.6, 0.6, 0.6), "b": t(0.6)})
    torch.testing.assert_close(out["a"], t(1, 1, 1) / math.sqrt(6))  # direction (1,1,1)/√3, norm 1/√2
    torch.testing.assert_close(out["b"], t(2**-0.5))  # scaled up from 0.6


@SETTINGS
@given(
    grads=updates(),
    scale=st.floats(1e-3, 0.5) | st.floats(-0.5, -1e-3),
    max_norm=st.floats(1e-2, 1e2),
    rule=st.sampled_from(["uniform", "dimension"]),
)
def test_pelikan_law_away_from_the_boundary(grads, scale, max_norm, rule):
    """Below C(1 − 1e-3) nothing changes; above C(1 + 1e-3) every non-zero layer has norm C_l (relative 1e-6)."""
    total = float(norm64(grads))
    assume(total > 1e-6)
    target = max_norm * (1 + scale)
    scaled = {k: v * (target / total) for k, v in grads.items()}
    out = step(clip_layers_pelikan(max_norm, rule=rule), scaled)
    if scale < 0:
        torch.testing.assert_close(out, scaled, rtol=1e-12, atol=0)
        return
    nonzero = [k for k, v in scaled.items() if float(v.double().norm()) > 0]
    dims = {k: scaled[k].numel() for k in scaled}
    for k in nonzero:
        share = 1 / len(scaled) if rule == "uniform" else dims[k] / sum(dims.values())
        got = float(out[k].double().norm())
        assert got == pytest.approx(max_norm * math.sqrt(share), rel=1e-6)


def test_pelikan_keeps_a_zero_layer_zero_and_the_total_below_c():
    grads = {"a": t(3, 4), "z": t(0, 0, 0)}
    for rule, norm_a in (("uniform", 1 / math.sqrt(2)), ("dimension", math.sqrt(2 / 5))):
        out = step(clip_layers_pelikan(1.0, rule=rule), grads)
        assert torch.equal(out["z"], grads["z"])
        torch.testing.assert_close(out["a"], t(0.6, 0.8) * norm_a)
        assert float(norm64(out)) < 1.0


# --------------------------------------------------------------------------------------------------------------
# Laws for every input (hypothesis)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(CLIPS))
@SETTINGS
@given(grads=updates(), max_norm=st.floats(1e-3, 1e3))
@example(grads=ZEROS, max_norm=1.0)
def test_every_mode_bounds_the_total_norm(mode, grads, max_norm):
    out = step(CLIPS[mode](max_norm), grads)
    assert list(out) == list(grads) and all(out[k].dtype == grads[k].dtype for k in grads)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert float(norm64(out)) <= max_norm * (1 + REL)


@pytest.mark.parametrize("mode", sorted(CLIPS))
@SETTINGS
@given(grads=updates(batch=1), max_norm=st.floats(1e-3, 1e3))
@example(grads=ZEROS_BATCHED, max_norm=1.0)
def test_every_mode_bounds_each_client_and_a_stack_equals_its_clients(mode, grads, max_norm):
    out = step(CLIPS[mode](max_norm, 1), grads)
    assert (norm64(out, 1) <= max_norm * (1 + REL)).all()
    for i in range(next(iter(grads.values())).shape[0]):
        one = step(CLIPS[mode](max_norm), {k: v[i] for k, v in grads.items()})
        for k in grads:
            torch.testing.assert_close(out[k][i], one[k], rtol=1e-6, atol=0)


@pytest.mark.parametrize("rule", ["uniform", "dimension"])
@SETTINGS
@given(grads=updates(), max_norm=st.floats(1e-3, 1e3))
def test_pelikan_total_is_exactly_c_above_the_bound(rule, grads, max_norm):
    out = step(clip_layers_pelikan(max_norm, rule=rule), grads)
    before = float(norm64(grads))
    if before < max_norm:
        assert all(torch.equal(out[k], grads[k]) for k in grads)
    elif all(bool(v.any()) for v in grads.values()):
        assert math.isclose(float(norm64(out)), max_norm, rel_tol=1e-6)


@pytest.mark.parametrize("rule", ["uniform", "dimension"])
@SETTINGS
@given(grads=updates(), max_norm=st.floats(1e-3, 1e3))
def test_independent_bounds_each_layer_by_its_share(rule, grads, max_norm):
    out = step(clip_layers_independent(max_norm, rule=rule), grads)
    d = sum(v.numel() for v in grads.values())
    for k, v in out.items():
        bound = max_norm / math.sqrt(len(grads)) if rule == "uniform" else max_norm * math.sqrt(v.numel() / d)
        assert float(norm64({k: v})) <= bound * (1 + REL)
        if float(norm64({k: grads[k]})) <= bound:
            assert torch.equal(v, grads[k])


@SETTINGS
@given(grads=updates(batch=1))
def test_normalize_layers_gives_unit_layer_norms(grads):
    out = step(normalize_layers(batch_dims=1), grads)
    for k, v in out.items():
        norms, before = norm64({k: v}, 1), norm64({k: grads[k]}, 1)
        torch.testing.assert_close(norms, (before > 0).double(), rtol=1e-6, atol=0)  # zero layers stay zero


# --------------------------------------------------------------------------------------------------------------
# Zero updates, stacked cohorts, no mutation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(CLIPS) + ["normalize_layers"])
@pytest.mark.parametrize("batch_dims", [0, 1])
def test_a_zero_update_stays_exactly_zero(mode, batch_dims):
    zeros = {"w": torch.zeros(3, 2, 4), "b": torch.zeros(3, 4), "s": torch.zeros(3)}
    tx = (
        normalize_layers(batch_dims=batch_dims)
        if mode == "normalize_layers"
        else CLIPS[mode](1.0, batch_dims)
    )
    out = step(tx, zeros)
    assert all(torch.equal(out[k], zeros[k]) for k in zeros)  # equal to zero also rules out NaN


@pytest.mark.parametrize("mode", sorted(CLIPS) + ["normalize_layers"])
def test_a_stacked_cohort_equals_its_clients_and_inputs_are_untouched(mode):
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.0, 0.05, 1.0, 5.0])  # a zero client, one below and two above the bound
    grads = {
        "w": torch.randn(4, 2, 3, generator=gen) * scales[:, None, None],
        "b": torch.randn(4, 3, generator=gen) * scales[:, None],
        "s": torch.randn(4, generator=gen) * scales,
    }
    before = {k: v.clone() for k, v in grads.items()}
    make = (
        (lambda bd: normalize_layers(batch_dims=bd))
        if mode == "normalize_layers"
        else (lambda bd: CLIPS[mode](1.0, bd))
    )
    stacked = step(make(1), grads)
    assert all(torch.equal(grads[k], before[k]) for k in grads)
    for i in range(4):
        one = step(make(0), {k: v[i] for k, v in grads.items()})
        for k in grads:
            torch.testing.assert_close(stacked[k][i], one[k], rtol=1e-6, atol=0)


def test_half_precision_is_scaled_up_without_overflow():
    # C_l / ||b|| = 0.707 / 1e-5 exceeds float16's range (65504); the factor is applied in float64
    grads = {
        "a": torch.tensor([3.0, 4.0], dtype=torch.float16),
        "b": torch.tensor([1e-5], dtype=torch.float16),
    }
    out = step(clip_layers_pelikan(1.0), grads)
    assert out["b"].dtype == torch.float16
    torch.testing.assert_close(out["b"].double(), t(2**-0.5), rtol=1e-3, atol=0)  # float16 has 11 bits


# --------------------------------------------------------------------------------------------------------------
# Gaussian noise and generators
# --------------------------------------------------------------------------------------------------------------


def test_noise_comes_from_the_generator_in_tensor_order():
    grads = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    out = step(add_gaussian_noise(0.5, seed=7), grads)
    oracle = seeded_generator(7)
    expected_a = 0.5 * torch.randn(2, 3, generator=oracle)
    expected_b = 1.0 + 0.5 * torch.randn(4, generator=oracle)
    assert list(out) == ["a", "b"]
    torch.testing.assert_close(out["a"], expected_a)
    torch.testing.assert_close(out["b"], expected_b)
    again = step(add_gaussian_noise(0.5, seed=7), grads)
    assert all(torch.equal(out[k], again[k]) for k in grads)
    other = step(add_gaussian_noise(0.5, seed=8), grads)
    assert not torch.equal(out["a"], other["a"])
    assert torch.equal(grads["a"], torch.zeros(2, 3)) and torch.equal(grads["b"], torch.ones(4))


def test_noise_std_and_mean_match_stddev():
    # For n i.i.d. normal draws the sample std has standard error σ/√(2n) = 0.16% of σ at n = 200k, and the mean
    # σ/√n = 0.22% of σ: a 5-standard-error band is 0.79% (inside the 1% asked) and 1.1% of σ.
    n, sigma = 200_000, 2.5
    out = step(add_gaussian_noise(sigma, seed=0), {"x": torch.zeros(n, dtype=torch.float64)})
    std, mean = float(out["x"].std()), float(out["x"].mean())
    assert abs(std - sigma) <= 5 * sigma / math.sqrt(2 * n) < 0.01 * sigma
    assert abs(mean) <= 5 * sigma / math.sqrt(n)


def test_zero_stddev_is_a_no_op_that_draws_nothing():
    tx = add_gaussian_noise(0.0, seed=3)
    state = tx.init({})
    grads = {"a": torch.randn(3)}
    out, after = tx.update(grads, state, None)
    assert torch.equal(out["a"], grads["a"]) and torch.equal(after.rng, state.rng)


def test_the_state_carries_the_stream_and_a_checkpoint_mid_stream_resumes_it():
    # Oracle: one generator seeded alike, drawing the same shapes in turn (float64, as gaussian_noise draws).
    import io

    tx = add_gaussian_noise(1.0, seed=11)
    zeros = {"a": torch.zeros(3, dtype=torch.float64), "b": torch.zeros(2, 2, dtype=torch.float64)}
    state = tx.init(zeros)
    draws = []
    for _ in range(2):
        out, state = tx.update(zeros, state)
        draws.append(out)
    saved = io.BytesIO()
    torch.save(state, saved)
    straight = []
    for _ in range(3):
        out, state = tx.update(zeros, state)
        straight.append(out)
    saved.seek(0)
    resumed = torch.load(saved, weights_only=False)
    for expected in straight:
        out, resumed = tx.update(zeros, resumed)
        assert all(torch.equal(out[k], expected[k]) for k in zeros)
    oracle = seeded_generator(11)
    for out in draws + straight:
        for k, v in zeros.items():
            assert torch.equal(out[k], torch.normal(0.0, 1.0, v.shape, generator=oracle, dtype=torch.float64))
    assert not torch.equal(draws[0]["a"], draws[1]["a"])  # the state moved on


def test_a_state_continues_a_given_generator_without_moving_it():
    gen = seeded_generator(5)
    torch.randn(4, generator=gen)
    before = gen.get_state()
    out, _ = add_gaussian_noise(2.0).update(
        {"x": torch.zeros(6, dtype=torch.float64)}, gaussian_noise_state(gen)
    )
    assert torch.equal(gen.get_state(), before)
    assert torch.equal(out["x"], torch.normal(0.0, 2.0, (6,), generator=gen, dtype=torch.float64))


def test_unseeded_noise_starts_from_the_os_csprng():
    # two 63-bit seeds from the OS CSPRNG collide with probability 2**-63
    tx = add_gaussian_noise(1.0)
    a, _ = tx.update({"x": torch.zeros(8)}, tx.init({}))
    b, _ = tx.update({"x": torch.zeros(8)}, tx.init({}))
    assert not torch.equal(a["x"], b["x"])


def test_noise_keeps_dtype_and_device():
    grads = {"h": torch.zeros(5, dtype=torch.float16), "d": torch.zeros(5, dtype=torch.float64)}
    out = step(add_gaussian_noise(1.0, seed=0), grads)
    assert out["h"].dtype == torch.float16 and out["d"].dtype == torch.float64
    assert out["h"].abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_on_a_cuda_tensor_equals_the_cpu_draw():
    grads = {"a": torch.zeros(1000, device="cuda")}
    out = step(add_gaussian_noise(1.0, seed=5), grads)
    cpu = step(add_gaussian_noise(1.0, seed=5), {"a": torch.zeros(1000)})
    assert out["a"].device.type == "cuda"
    assert torch.equal(out["a"].cpu(), cpu["a"])


def test_secure_generators_differ():
    # two 63-bit seeds from the OS CSPRNG collide with probability 2**-63
    a = torch.randn(8, generator=secure_generator())
    b = torch.randn(8, generator=secure_generator())
    assert not torch.equal(a, b)


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, "x", None])
def test_bad_max_norm_is_rejected(bad):
    for make in (clip_layers_independent, clip_layers_pelikan):
        with pytest.raises(ValueError, match="max_norm must be a positive finite number"):
            make(bad)


def test_bad_rule_stddev_generator_seed_are_rejected():
    with pytest.raises(ValueError, match="rule must be one of uniform, dimension. Got 'layer'"):
        clip_layers_pelikan(1.0, rule="layer")
    with pytest.raises(ValueError, match="rule"):
        clip_layers_independent(1.0, rule="global")
    with pytest.raises(ValueError, match="batch_dims"):
        normalize_layers(batch_dims=-1)
    for bad in (-0.1, math.inf, math.nan, "x"):
        with pytest.raises(ValueError, match="stddev must be a finite number >= 0"):
            add_gaussian_noise(bad, seed=0)
    with pytest.raises(ValueError, match="generator must be a CPU torch.Generator"):
        gaussian_noise_state(0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        add_gaussian_noise(1.0, seed=-1)
    with pytest.raises(ValueError, match="state must be a GaussianNoiseState"):
        add_gaussian_noise(1.0).update({"x": torch.zeros(2)}, None)
    with pytest.raises(ValueError, match="seed"):
        seeded_generator(-1)


def test_noise_tail_is_not_cut_at_the_float32_box_muller_bound():
    """Oracle: the structure of torch's CPU sampler. Box–Muller pairs z_j, z_{j+8} of each 16-block share
    u1 = exp(−(z_j² + z_{j+8}²)/2); drawn in float32, u1 is a multiple of 2^-24 (so |z| ≤ √(48 ln 2) = 5.77),
    drawn in float64 a multiple of 2^-53 (continuous at this scale). Among the pairs with the smallest u1
    (< 64·2^-24, ~32 expected of 2^23), float32 draws sit on the 2^-24 grid; float64 draws do not. Then a
    Gaussian tail count at 4σ (Poisson, 5 standard deviations)."""
    n = 2**24
    noised = step(add_gaussian_noise(1.0, seed=2024), {"z": torch.zeros(n, dtype=torch.float32)})
    z = noised["z"].double().view(-1, 2, 8)
    u1 = torch.exp(-(z[:, 0] ** 2 + z[:, 1] ** 2) / 2).flatten() * 2**24
    small = u1[u1 < 64]
    off_grid = int(((small - small.round()).abs() > 0.01).sum())
    assert small.numel() >= 10 and off_grid >= 0.8 * small.numel(), (small.numel(), off_grid)
    tail = int((z.abs() > 4).sum())
    expected = n * math.erfc(4 / math.sqrt(2))
    assert abs(tail - expected) < 5 * math.sqrt(expected), (tail, expected)
