"""Hypothesis strategies shared by the gradient-core property tests: random named updates, zeros likely."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

_finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)


@st.composite
def updates(draw, batch: int = 0) -> dict[str, torch.Tensor]:
    """1-3 named float32 tensors of small random shapes (with ``batch`` shared leading axes), zeros likely."""
    lead = tuple(draw(st.integers(1, 3)) for _ in range(batch))
    out = {}
    for i in range(draw(st.integers(1, 3))):
        shape = lead + tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
        elems = st.one_of(st.just(0.0), _finite)
        out[f"t{i}"] = torch.from_numpy(draw(arrays("float32", shape, elements=elems)).copy())
    return out


ZEROS = {"t0": torch.zeros(3, 2), "t1": torch.zeros(2)}
ZEROS_BATCHED = {"t0": torch.zeros(2, 3), "t1": torch.zeros(2)}
