"""Laws that hold for every input (hypothesis): the clipping bound, clipping as a no-op below it, no mutation."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from hypothesis import example, given, settings
from update_strategies import ZEROS, ZEROS_BATCHED, updates

from fedsim.gradcore import clip_by_global_norm, global_norm

SETTINGS = settings(max_examples=150, deadline=None)

REL = 1e-5  # fp32 rounding of the norm and of the factor max_norm / norm


@SETTINGS
@given(updates(), st.floats(1e-3, 1e3))
@example(ZEROS, 1.0)
def test_clipped_norm_is_bounded(grads, max_norm):
    tx = clip_by_global_norm(max_norm)
    out, _ = tx.update(grads, tx.init(grads))
    norm = global_norm(out)
    assert torch.isfinite(norm)
    assert float(norm) <= max_norm * (1 + REL)


@SETTINGS
@given(updates(batch=1), st.floats(1e-3, 1e3))
@example(ZEROS_BATCHED, 1.0)
def test_clipped_norm_is_bounded_per_client(grads, max_norm):
    tx = clip_by_global_norm(max_norm, batch_dims=1)
    out, _ = tx.update(grads, tx.init(grads))
    norms = global_norm(out, batch_dims=1)
    assert torch.isfinite(norms).all()
    assert (norms <= max_norm * (1 + REL)).all()


@SETTINGS
@given(updates(), st.floats(1.0, 10.0))
@example(ZEROS, 1.0)
def test_clipping_is_a_no_op_below_the_bound(grads, slack):
    max_norm = max(float(global_norm(grads)) * slack, 1e-6)
    tx = clip_by_global_norm(max_norm)
    out, _ = tx.update(grads, tx.init(grads))
    assert all(torch.equal(out[k], grads[k]) for k in grads)


@settings(max_examples=25, deadline=None)
@given(grads=updates())
def test_inputs_are_never_mutated(make_transform, grads):
    tx = make_transform(0)
    params = {k: v + 1.0 for k, v in grads.items()}
    params_before = {k: v.clone() for k, v in params.items()}
    state = tx.init(params)
    for _ in range(2):
        state_before = _clone(state)
        grads_before = {k: v.clone() for k, v in grads.items()}
        _, new_state = tx.update(grads, state, params)
        assert _equal(grads, grads_before) and _equal(params, params_before) and _equal(state, state_before)
        state = new_state


def _clone(tree):
    return _map(lambda x: x.clone(), tree)


def _map(fn, tree):
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map(fn, v) for k, v in tree.items()}
    if hasattr(tree, "_fields"):
        return type(tree)(*(_map(fn, v) for v in tree))
    return tuple(_map(fn, v) for v in tree)


def _equal(a, b) -> bool:
    flat_a, flat_b = [], []
    _map(flat_a.append, a)
    _map(flat_b.append, b)
    return len(flat_a) == len(flat_b) and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True))
