"""The vectorised path's stack helpers: rows of any dense layout read without a copy, and the same sums and
finiteness verdicts as the plain ``tensordot`` / ``isfinite`` on a contiguous copy (generated layouts)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.engine.accumulate import CohortAccumulator, finite_rows
from fedsim.engine.stacks import broadcast_into, client_rows, subtract_from_rows, weighted_row_sum


@st.composite
def stacks(draw):
    """A ``[k, ...]`` float32 stack stored in a random order of its inner dimensions (as gradients come)."""
    k = draw(st.integers(1, 5))
    inner = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    perm = draw(st.permutations(range(len(inner))))
    seed = draw(st.integers(0, 2**31 - 1))
    stored = torch.randn(k, *[inner[p] for p in perm], generator=torch.Generator().manual_seed(seed))
    inverse = sorted(range(len(perm)), key=lambda j: perm[j])
    return stored.permute(0, *[1 + i for i in inverse])  # shape [k, *inner], memory in the permuted order


@settings(max_examples=60, deadline=None)
@given(stacks(), st.data())
def test_weighted_row_sum_equals_tensordot_without_copying(t, data):
    w = torch.tensor(data.draw(st.lists(st.floats(0, 10), min_size=t.shape[0], max_size=t.shape[0])))
    rows, _ = client_rows(t)
    if t.dim() > 1:
        assert rows.data_ptr() == t.data_ptr()  # a view of the stack's memory, not a copy
    expected = torch.tensordot(w.double(), t.contiguous().double(), dims=1)
    assert torch.allclose(weighted_row_sum(w, t).double(), expected, rtol=1e-5, atol=1e-5)
    assert weighted_row_sum(w, t).shape == t.shape[1:]


def _every_other_row(t: torch.Tensor) -> torch.Tensor:
    """A stack with ``t``'s values that is not dense: every other slice of a twice larger buffer."""
    base = torch.zeros(t.shape[0], 2 * t.shape[1], *t.shape[2:])
    view = base[:, ::2]
    view.copy_(t)
    return view


@settings(max_examples=60, deadline=None)
@given(stacks(), st.booleans())
def test_broadcast_and_subtract_in_the_stacks_memory(t, sparse):
    if sparse and t.dim() > 1:
        t = _every_other_row(t)
    one = torch.randn(t.shape[1:], generator=torch.Generator().manual_seed(7))
    for stack in (t.clone(memory_format=torch.preserve_format), _every_other_row(t) if t.dim() > 1 else t.clone()):
        layout = stack.stride()
        assert broadcast_into(stack, one) is stack and stack.stride() == layout
        assert torch.equal(stack, one.expand_as(stack))
    for other in (t.clone(memory_format=torch.preserve_format), _every_other_row(t) if t.dim() > 1 else t.clone()):
        expected = other - one
        assert subtract_from_rows(other, one) is other
        assert torch.allclose(other, expected)


@settings(max_examples=60, deadline=None)
@given(stacks(), st.data())
def test_finite_rows_find_the_poisoned_client_in_any_layout(t, data):
    k = t.shape[0]
    bad = data.draw(st.sets(st.integers(0, k - 1)))
    value = data.draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    poisoned = t.clone(memory_format=torch.preserve_format)
    for i in bad:
        poisoned[(i,) + (0,) * (t.dim() - 1)] = value
    expected = torch.isfinite(poisoned.reshape(k, -1)).all(1)
    assert torch.equal(finite_rows([poisoned], k, torch.device("cpu")), expected)


def test_in_place_accumulation_equals_the_copying_one():
    theta = {"w": torch.randn(3, 4), "b": torch.randn(3)}
    new = {"w": torch.randn(5, 4, 3).transpose(1, 2), "b": torch.randn(5, 3)}  # a transposed weight stack
    copies = {k: v.clone(memory_format=torch.preserve_format) for k, v in new.items()}
    before = {k: v.clone() for k, v in new.items()}
    a, b = CohortAccumulator(theta), CohortAccumulator(theta)
    a.add_stacked(list(range(5)), new, [1, 2, 3, 4, 5], [0.0] * 5)
    b.add_stacked(list(range(5)), copies, [1, 2, 3, 4, 5], [0.0] * 5, in_place=True)
    for k in theta:
        assert torch.allclose(a.delta_sum[k], b.delta_sum[k], atol=1e-12)
        assert torch.equal(new[k], before[k])  # untouched without in_place
    assert not torch.equal(copies["w"], new["w"])  # overwritten with the updates in place
