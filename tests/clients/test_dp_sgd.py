"""Sample-level DP-SGD: ``torch.func`` per-example gradients and ``dp_sgd_aggregate`` against Opacus, masks, cohorts, laws.

Oracles: a loop of single-example ``torch.autograd.grad`` calls (per-example gradients); Opacus 1.6's
``GradSampleModule`` + ``DPOptimizer`` on the same batch and the same generator seed (the privatised gradient);
explicit per-client loops and unpadded batches (cohorts and masks); the Gaussian's sample standard deviation against
its standard error (the noise scale).
"""

from __future__ import annotations

import copy
import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import example, given, settings
from opacus import GradSampleModule
from torch import nn

from clients.dp_sgd import dp_sgd_aggregate, opacus_private_grads, per_sample_grads
from fedsim.gradcore import global_norm, seeded_generator

B = 8


def privatize(grads, **kw):
    """The privatised gradients alone."""
    return dp_sgd_aggregate(grads, **kw).grads


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def _conv() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6, 3))


MODELS = {"mlp": (_mlp, (5,)), "conv": (_conv, (2, 8))}


def _setup(kind: str, seed: int = 0, batch: int = B, lead: tuple[int, ...] = ()):
    build, shape = MODELS[kind]
    torch.manual_seed(seed)
    model = build()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*lead, batch, *shape, generator=gen) * 2.0
    y = torch.randint(0, 3, (*lead, batch), generator=gen)
    return model, x, y


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def _example_norms(grads: dict[str, torch.Tensor], batch_dims: int = 1) -> torch.Tensor:
    return global_norm(grads, batch_dims=batch_dims)


def _assert_close_maps(a, b, **tol):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


# --- per-example gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_per_sample_grads_equal_a_loop_of_single_example_autograd(kind):
    model, x, y = _setup(kind)
    got = per_sample_grads(model, _params(model), x, y)
    names = [n for n, _ in model.named_parameters()]
    for i in range(B):  # oracle: autograd on a batch of one
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        expected = torch.autograd.grad(loss, list(model.parameters()))
        for name, e in zip(names, expected, strict=True):
            torch.testing.assert_close(got[name][i], e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_stacked_per_sample_grads_equal_a_loop_over_clients(kind):
    k = 3
    model, x, y = _setup(kind, lead=(k,))
    thetas = [_params(_setup(kind, seed=10 + c)[0]) for c in range(k)]
    stacked = {n: torch.stack([t[n] for t in thetas]) for n in thetas[0]}
    got = per_sample_grads(model, stacked, x, y, batch_dims=1)
    for c in range(k):
        one = per_sample_grads(model, thetas[c], x[c], y[c])
        _assert_close_maps({n: g[c] for n, g in got.items()}, one, rtol=1e-6, atol=1e-6)


# --- the key test: privatize(per_sample_grads) == Opacus -------------------------------------------------------


@pytest.mark.parametrize("noise_multiplier", [0.0, 1.1])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_privatize_equals_opacus_dp_optimizer(kind, noise_multiplier):
    model, x, y = _setup(kind)
    grads = per_sample_grads(model, _params(model), x, y)
    norms = _example_norms(grads)
    max_norm = float(norms.median())  # some examples clipped, some not
    assert (norms > max_norm).any() and (norms < max_norm).any()
    kw = dict(max_norm=max_norm, noise_multiplier=noise_multiplier, expected_batch_size=B)
    ours = privatize(grads, mask=None, generator=seeded_generator(7), **kw)
    theirs = opacus_private_grads(model, x, y, generator=seeded_generator(7), **kw)
    _assert_close_maps(ours, theirs, rtol=1e-5, atol=1e-6)
    if noise_multiplier == 0.0:  # the clipping alone moves the result away from the plain mean gradient
        plain = {n: g.mean(0) for n, g in grads.items()}
        assert any(not torch.allclose(ours[n], plain[n], rtol=1e-3, atol=1e-6) for n in ours)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")  # inputs need no grad
@pytest.mark.parametrize("noise_multiplier", [0.0, 0.7])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_privatize_of_opacus_grad_samples_is_bit_identical_to_opacus(kind, noise_multiplier):
    """With Opacus' own per-sample gradients as input, clip factor, contraction, noise and scaling match exactly.

    ``expected_batch_size`` is not the batch size (Poisson sampling) and not a power of two, so the division is
    tested too (a multiplication by its reciprocal would round differently).
    """
    model, x, y = _setup(kind)
    inner = copy.deepcopy(model)
    nn.functional.cross_entropy(GradSampleModule(inner, loss_reduction="mean")(x), y).backward()
    samples = {n: p.grad_sample for n, p in inner.named_parameters()}
    kw = dict(max_norm=float(_example_norms(samples).median()), noise_multiplier=noise_multiplier)
    ours = privatize(samples, mask=None, expected_batch_size=6.0, generator=seeded_generator(3), **kw)
    theirs = opacus_private_grads(model, x, y, expected_batch_size=6.0, generator=seeded_generator(3), **kw)
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[n], theirs[n]) for n in ours)


def test_opacus_reference_leaves_the_callers_model_untouched():
    model, x, y = _setup("mlp")
    before = copy.deepcopy(model.state_dict())
    opacus_private_grads(
        model, x, y, max_norm=1.0, noise_multiplier=1.0, expected_batch_size=B, generator=seeded_generator(0)
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and not hasattr(p, "grad_sample") for p in model.parameters())


# --- masks and cohorts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_multiplier", [0.0, 1.3])
def test_masked_rows_contribute_nothing(noise_multiplier):
    model, x, y = _setup("conv", batch=B + 3)
    grads = per_sample_grads(model, _params(model), x, y)
    grads = {n: g * 50.0 if n.endswith("bias") else g for n, g in grads.items()}  # padding rows stay large
    mask = torch.ones(B + 3)
    mask[[1, 4, 9]] = 0.0
    keep = mask.bool()
    kw = dict(max_norm=0.3, noise_multiplier=noise_multiplier, expected_batch_size=5.5)
    padded = privatize(grads, mask=mask, generator=seeded_generator(1), **kw)
    unpadded = privatize(
        {n: g[keep] for n, g in grads.items()}, mask=None, generator=seeded_generator(1), **kw
    )
    _assert_close_maps(padded, unpadded, rtol=1e-6, atol=1e-7)


def test_stacked_ragged_clients_equal_a_loop_over_clients_without_noise():
    k, sizes = 3, [8, 5, 2]  # ragged: clients 1 and 2 pad to 8 and mask the padding
    model, x, y = _setup("mlp", lead=(k,))
    thetas = [_params(_setup("mlp", seed=20 + c)[0]) for c in range(k)]
    stacked = {n: torch.stack([t[n] for t in thetas]) for n in thetas[0]}
    mask = torch.zeros(k, B)
    for c, n in enumerate(sizes):
        mask[c, :n] = 1.0
    kw = dict(max_norm=0.4, noise_multiplier=0.0, expected_batch_size=6.0)
    grads = per_sample_grads(model, stacked, x, y, batch_dims=1)
    got = privatize(grads, mask=mask, generator=seeded_generator(0), batch_dims=1, **kw)
    for c, n in enumerate(sizes):
        one = per_sample_grads(model, thetas[c], x[c, :n], y[c, :n])
        expected = privatize(one, mask=None, generator=seeded_generator(0), **kw)
        _assert_close_maps({name: g[c] for name, g in got.items()}, expected, rtol=1e-6, atol=1e-7)


def test_one_client_stack_equals_the_unstacked_call_with_noise():
    model, x, y = _setup("conv")
    grads = per_sample_grads(model, _params(model), x, y)
    kw = dict(max_norm=0.5, noise_multiplier=1.7, expected_batch_size=B)
    mask = torch.ones(B)
    flat = privatize(grads, mask=mask, generator=seeded_generator(5), **kw)
    stacked = privatize(
        {n: g.unsqueeze(0) for n, g in grads.items()},
        mask=mask.unsqueeze(0),
        generator=seeded_generator(5),
        batch_dims=1,
        **kw,
    )
    _assert_close_maps({n: g[0] for n, g in stacked.items()}, flat, rtol=1e-6, atol=1e-7)


# --- laws ------------------------------------------------------------------------------------------------------


@st.composite
def per_example_grads(draw):
    """Per-example gradients ``[b, ...]`` of two tensors over many scales, sometimes with an all-zero example."""
    b = draw(st.integers(1, 6))
    scale = draw(st.sampled_from([0.0, 1e-6, 1.0, 1e3]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    grads = {"w": torch.randn(b, 3, 4, generator=gen) * scale, "b": torch.randn(b, 3, generator=gen) * scale}
    if draw(st.booleans()):
        grads["w"][0] = 0.0
        grads["b"][0] = 0.0
    return grads


ZERO_EXAMPLES = {"w": torch.zeros(2, 3, 4), "b": torch.zeros(2, 3)}


@settings(max_examples=100, deadline=None)
@given(per_example_grads(), st.floats(1e-3, 1e3))
@example(ZERO_EXAMPLES, 1.0)
def test_every_clipped_example_has_norm_at_most_c_and_zero_stays_zero(grads, max_norm):
    # each example as its own one-example "client": the output is that example's clipped gradient
    one_each = {n: g.unsqueeze(1) for n, g in grads.items()}
    mask = torch.ones(next(iter(grads.values())).shape[0], 1)
    clipped = privatize(
        one_each,
        mask=mask,
        max_norm=max_norm,
        noise_multiplier=0.0,
        expected_batch_size=1.0,
        generator=seeded_generator(0),
        batch_dims=1,
    )
    norms = global_norm(clipped, batch_dims=1)
    assert torch.isfinite(norms).all()
    assert (norms <= max_norm * (1 + 1e-5)).all()  # fp32 rounding of the norm and the factor
    zero = global_norm(grads, batch_dims=1) == 0
    assert (norms[zero] == 0).all()


def test_noise_std_is_sigma_c_over_expected_batch_size_on_zero_gradients():
    sigma, c, ebs = 1.3, 0.8, 16.0
    grads = {"w": torch.zeros(4, 200, 100), "b": torch.zeros(4, 100)}
    out = privatize(
        grads,
        mask=None,
        max_norm=c,
        noise_multiplier=sigma,
        expected_batch_size=ebs,
        generator=seeded_generator(9),
    )
    noise = torch.cat([t.reshape(-1) for t in out.values()]).double()
    n, expected = noise.numel(), sigma * c / ebs
    # oracle: the Gaussian's sample std has standard error std/sqrt(2n), its mean std/sqrt(n); 5 standard errors
    assert abs(float(noise.std()) - expected) <= 5 * expected / math.sqrt(2 * n)
    assert abs(float(noise.mean())) <= 5 * expected / math.sqrt(n)


def test_invalid_arguments_are_all_reported_at_once():
    grads = {"w": torch.zeros(2, 3)}
    with pytest.raises(ValueError) as info:
        privatize(
            grads,
            mask=None,
            max_norm=0.0,
            noise_multiplier=-1.0,
            expected_batch_size=math.inf,
            generator=None,
        )
    msg = str(info.value)
    for field in ("max_norm", "noise_multiplier", "expected_batch_size", "generator"):
        assert f"{field} must be" in msg
    with pytest.raises(ValueError, match="mask must have shape"):
        privatize(
            grads,
            mask=torch.ones(3),
            max_norm=1.0,
            noise_multiplier=0.0,
            expected_batch_size=2.0,
            generator=seeded_generator(0),
        )
