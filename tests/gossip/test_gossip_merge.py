"""Merge rules: the spec's worked numbers, the 1/N variance law, and the invariants as property tests.

Oracles: hand-worked layers (worked from Tian et al.'s merge rule), the closed forms
var(mean of N i.i.d.) = σ²/N and var(corrected) = var(A)·(s2+e)/(var(A)+e), and a per-node Python loop for the
stacked, masked path.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from fedsim.errors import ConfigError
from fedsim.gossip.merge import corrected_average, merge_params, merge_transform, plain_average
from fedsim.gradcore import apply_updates

SPEC_A = torch.tensor([1.0, -1.0, 1.0, -1.0])
SPEC_B = torch.tensor([1.0, 1.0, -1.0, -1.0])


def pvar(x: torch.Tensor) -> float:
    return float(x.double().var(correction=0))


def test_spec_worked_example_without_epsilon():
    received = torch.stack([SPEC_A, SPEC_B])
    own = torch.zeros(4)  # β = 0: the node's own model does not enter
    plain = plain_average(own, received, beta=0.0)
    assert torch.equal(plain, torch.tensor([1.0, 0.0, 0.0, -1.0]))
    assert pvar(plain) == pytest.approx(0.5)
    corrected = corrected_average(own, received, beta=0.0, eps=0.0)
    assert torch.allclose(corrected, torch.tensor([2**0.5, 0.0, 0.0, -(2**0.5)]), atol=1e-6)
    assert pvar(corrected) == pytest.approx(1.0, abs=1e-6)


def test_spec_worked_example_with_default_epsilon():
    corrected = corrected_average(torch.zeros(4), torch.stack([SPEC_A, SPEC_B]), beta=0.0)  # e = 1e-4
    factor = ((1.0 + 1e-4) / (0.5 + 1e-4)) ** 0.5  # closed form: 1.41414 (spec rounds e = 0's 1.4142)
    assert torch.allclose(corrected, torch.tensor([factor, 0.0, 0.0, -factor]), atol=1e-6)
    assert abs(float(corrected[0]) - 1.4142) < 2e-4


@pytest.mark.parametrize(("n", "spec_ratio"), [(2, 0.503), (8, 0.126), (32, 0.031)])
def test_plain_average_of_iid_xavier_layers_shrinks_variance_by_one_over_n(n, spec_ratio):
    gen = torch.Generator().manual_seed(n)
    layers = torch.stack(
        [torch.nn.init.xavier_uniform_(torch.empty(256, 256), generator=gen) for _ in range(n + 1)]
    )
    own, received = layers[0], layers[1:]
    mean_in = float(torch.stack([received[i].double().var(correction=0) for i in range(n)]).mean())
    ratio = pvar(plain_average(own, received, beta=0.0)) / mean_in
    # The variance of 65536 elements is estimated to ~0.6% (relative sd ≈ √(2/65536)); 2.5% is > 4 sd.
    assert abs(ratio * n - 1.0) < 0.025
    assert abs(spec_ratio * n - 1.0) < 0.025  # the spec's reported ratios obey the same law
    corrected = corrected_average(own, received, beta=0.0, eps=0.0)
    assert pvar(corrected) == pytest.approx(mean_in, rel=1e-5)
    a = plain_average(own, received, beta=0.0)
    e = 1e-4
    closed_form = pvar(a) * (mean_in + e) / (pvar(a) + e)
    assert pvar(corrected_average(own, received, beta=0.0, eps=e)) == pytest.approx(closed_form, rel=1e-5)


_finite = st.floats(-100, 100, allow_nan=False, allow_subnormal=False, width=32)


@st.composite
def merge_case(draw):
    """K nodes' own layers [K, *shape], received [K, N, *shape] and a mask with at least one slot per node."""
    k, n = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    own = torch.from_numpy(draw(arrays("float32", (k, *shape), elements=_finite)).copy())
    received = torch.from_numpy(draw(arrays("float32", (k, n, *shape), elements=_finite)).copy())
    mask = torch.tensor(
        draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=k, max_size=k))
    )
    mask[:, 0] = True
    beta = draw(st.sampled_from([0.0, 0.25, 0.5, 0.9]))
    eps = draw(st.sampled_from([0.0, 1e-4]))
    return own, received, mask, beta, eps


SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(merge_case())
def test_identical_inputs_are_unchanged(case):
    own, received, mask, beta, eps = case
    same = own.unsqueeze(1).expand_as(received).clone()
    for fn in (plain_average, corrected_average):
        kwargs = {"eps": eps} if fn is corrected_average else {}
        out = fn(own, same, beta=beta, mask=mask, batch_dims=1, **kwargs)
        assert torch.allclose(out, own, rtol=1e-5, atol=1e-4)


@SETTINGS
@given(merge_case())
def test_correction_keeps_the_plain_average_mean_and_sets_the_closed_form_variance(case):
    own, received, mask, beta, eps = case
    plain = plain_average(own, received, beta=beta, mask=mask, batch_dims=1).double()
    out = corrected_average(own, received, beta=beta, eps=eps, mask=mask, batch_dims=1).double()
    axes = tuple(range(1, own.dim()))
    assert torch.allclose(out.mean(axes), plain.mean(axes), atol=1e-3, rtol=1e-5)
    for i in range(own.shape[0]):  # closed form per node, over the received slots it holds
        got = received[i][mask[i]].double()
        s2 = float(torch.stack([g.var(correction=0) for g in got]).mean())
        va = pvar(plain[i])
        if va + eps > 1e-6:
            assert pvar(out[i]) == pytest.approx(va * (s2 + eps) / (va + eps), rel=1e-3, abs=1e-3)


@SETTINGS
@given(merge_case())
def test_stacked_masked_merge_equals_a_per_node_loop(case):
    own, received, mask, beta, eps = case
    for fn in (plain_average, corrected_average):
        kwargs = {"eps": eps} if fn is corrected_average else {}
        stacked = fn(own, received, beta=beta, mask=mask, batch_dims=1, **kwargs)
        for i in range(own.shape[0]):
            one = fn(own[i], received[i][mask[i]], beta=beta, **kwargs)
            assert torch.allclose(stacked[i], one, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(merge_case())
def test_plain_average_is_the_weighted_mean(case):
    own, received, mask, beta, _ = case
    out = plain_average(own, received, beta=beta, mask=mask, batch_dims=1)
    for i in range(own.shape[0]):
        expected = beta * own[i].double() + (1 - beta) * received[i][mask[i]].double().mean(0)
        assert torch.allclose(out[i].double(), expected, rtol=1e-5, atol=1e-4)


def test_a_node_without_received_models_keeps_its_own():
    own, received = torch.randn(2, 3), torch.randn(2, 2, 3)
    mask = torch.tensor([[True, False], [False, False]])
    out = corrected_average(own, received, mask=mask, batch_dims=1)
    assert torch.equal(out[1], own[1])
    assert not torch.equal(out[0], own[0])


def test_only_float_weights_are_corrected():
    gen = torch.Generator().manual_seed(0)
    own = {
        "fc.weight": torch.randn(4, 3, generator=gen),
        "bn.running_mean": torch.randn(3, generator=gen),
        "bn.running_var": torch.rand(3, generator=gen),
        "bn.num_batches_tracked": torch.tensor(4),
        "scale": torch.tensor(2.0),
    }
    received = {
        k: torch.stack([v * 0 + i if v.dim() == 0 else torch.randn_like(v) for i in range(3)])
        for k, v in own.items()
    }
    received["bn.num_batches_tracked"] = torch.tensor([5, 6, 8])
    corrected = merge_params(own, received, rule="corrected", beta=0.0)
    plain = merge_params(own, received, rule="plain", beta=0.0)
    assert not torch.allclose(corrected["fc.weight"], plain["fc.weight"])
    for name in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "scale"):
        assert torch.equal(corrected[name], plain[name]), name
    assert corrected["bn.num_batches_tracked"].dtype == torch.int64
    assert int(corrected["bn.num_batches_tracked"]) == round((5 + 6 + 8) / 3)


def test_merge_transform_updates_apply_to_the_merged_models():
    gen = torch.Generator().manual_seed(1)
    own = {"w": torch.randn(3, 5, 4, generator=gen), "b": torch.randn(3, 4, generator=gen)}
    received = {"w": torch.randn(3, 2, 5, 4, generator=gen), "b": torch.randn(3, 2, 4, generator=gen)}
    tx = merge_transform("corrected", beta=0.5, batch_dims=1)
    updates, _ = tx.update(received, tx.init(own), own)
    merged = merge_params(own, received, rule="corrected", beta=0.5, batch_dims=1)
    for name in own:
        assert torch.allclose(apply_updates(own, updates)[name], merged[name], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rule": "median"}, "gossip.merge.rule"),
        ({"beta": 1.5}, "gossip.merge.beta"),
        ({"eps": -1.0}, "gossip.merge.eps"),
    ],
)
def test_bad_merge_args_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        merge_transform(**kwargs)
    assert err.value.field == field
