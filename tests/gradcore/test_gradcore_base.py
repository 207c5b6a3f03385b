"""The protocol itself: chain, identity, apply_updates, structure, checkpoints, and the import boundary."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from fedsim.gradcore import (
    ChainState,
    EmptyState,
    apply_updates,
    chain,
    identity,
    scale,
    scale_by_learning_rate,
    trace,
)


def _tree() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"z.weight": torch.randn(2, 3, generator=g), "a.bias": torch.randn(3, generator=g)}


def test_apply_updates_adds_and_keeps_dtype():
    params = {"x": torch.tensor([1.0, 2.0], dtype=torch.float16)}
    new = apply_updates(params, {"x": torch.tensor([0.5, -1.0], dtype=torch.float64)})
    assert new["x"].dtype == torch.float16
    torch.testing.assert_close(new["x"], torch.tensor([1.5, 1.0], dtype=torch.float16))  # hand: [1+0.5, 2-1]
    torch.testing.assert_close(params["x"], torch.tensor([1.0, 2.0], dtype=torch.float16))  # input untouched


def test_apply_updates_broadcasts_one_model_to_k_candidates():
    new = apply_updates({"x": torch.zeros(2)}, {"x": torch.tensor([[1.0, 2.0], [3.0, 4.0]])})
    torch.testing.assert_close(new["x"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # hand: 0 + u per client


def test_mismatched_names_raise():
    with pytest.raises(ValueError, match=r"Missing \['a.bias'\], unexpected \['b'\]"):
        apply_updates(_tree(), {"z.weight": torch.zeros(2, 3), "b": torch.zeros(3)})


def test_chain_composes_in_order_and_identity_is_neutral():
    # hand: trace(0.5) then scale(2) then -lr(0.1): two steps of g=1 give buf 1 then 1.5 -> -0.2, -0.3
    tx = chain(identity(), trace(0.5), scale(2.0), scale_by_learning_rate(0.1))
    params = {"x": torch.zeros(1, dtype=torch.float64)}
    state = tx.init(params)
    assert isinstance(state, ChainState) and len(state.inner) == 4 and state.inner[0] == EmptyState()
    outs = []
    for _ in range(2):
        out, state = tx.update({"x": torch.ones(1, dtype=torch.float64)}, state, params)
        outs.append(float(out["x"]))
    assert outs == pytest.approx([-0.2, -0.3], abs=1e-15)


def test_structure_and_order_preserved(make_transform):
    tx, params = make_transform(0), _tree()
    out, _ = tx.update(_tree(), tx.init(params), params)
    assert list(out) == list(params)
    assert all(out[k].shape == params[k].shape and out[k].dtype == params[k].dtype for k in params)
    assert isinstance(out, dict) and out is not params


def test_checkpoint_round_trip(make_transform):
    """torch.save/torch.load of the state mid-run resumes to the same updates as the uninterrupted run."""
    tx, params = make_transform(0), _tree()
    grads = [{k: v * (i + 1) for k, v in _tree().items()} for i in range(3)]
    state = tx.init(params)
    _, state = tx.update(grads[0], state, params)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=False)
    for g in grads[1:]:
        out_a, state = tx.update(g, state, params)
        out_b, restored = tx.update(g, restored, params)
        assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)


def test_gradcore_imports_no_flwr_or_ray():
    code = (
        "import sys, fedsim.gradcore; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'flwr', 'ray', 'opacus', 'strategies'} "
        "or m.startswith(('fedsim.engine', 'fedsim.privacy'))); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
