"""Closed-form checks of each transform on tiny tensors; every expected value is worked by hand in a comment."""

from __future__ import annotations

import math

import pytest
import torch

from fedsim.gradcore import (
    EmptyState,
    add_decayed_weights,
    clip_by_global_norm,
    global_norm,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_yogi,
    trace,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def run(transform, grads_seq, params=None):
    """Feed a sequence of single-tensor gradients {"x": g}; return the list of outputs and the final state."""
    params = params or {"x": torch.zeros_like(grads_seq[0])}
    state = transform.init(params)
    outs = []
    for g in grads_seq:
        out, state = transform.update({"x": g}, state, params)
        outs.append(out["x"])
    return outs, state


def test_scale():
    (out,), state = run(scale(0.5), [t(2.0, -4.0)])
    torch.testing.assert_close(out, t(1.0, -2.0))  # hand: 0.5 * [2, -4]
    assert state == EmptyState()


def test_scale_by_learning_rate_constant_flips_sign():
    (out,), _ = run(scale_by_learning_rate(0.1), [t(1.0, -2.0)])
    torch.testing.assert_close(out, t(-0.1, 0.2))  # hand: -0.1 * [1, -2]


def test_scale_by_learning_rate_schedule_counts_from_zero():
    outs, state = run(scale_by_learning_rate(lambda step: 0.1 * (step + 1)), [t(1.0), t(1.0), t(2.0)])
    # hand: lr(0)=0.1, lr(1)=0.2, lr(2)=0.3 -> -0.1*1, -0.2*1, -0.3*2
    torch.testing.assert_close(torch.stack(outs), t(-0.1, -0.2, -0.6).reshape(3, 1))
    assert state.count.dtype == torch.int64 and int(state.count) == 3


def test_trace_heavy_ball():
    outs, state = run(trace(0.9), [t(1.0, 2.0), t(3.0, -1.0)])
    torch.testing.assert_close(outs[0], t(1.0, 2.0))  # hand: buf1 = g1 (zero initial buffer)
    torch.testing.assert_close(outs[1], t(3.9, 0.8))  # hand: 0.9*[1, 2] + [3, -1]
    torch.testing.assert_close(state.trace["x"], t(3.9, 0.8))


def test_trace_nesterov():
    outs, state = run(trace(0.9, nesterov=True), [t(1.0, 2.0), t(3.0, -1.0)])
    torch.testing.assert_close(outs[0], t(1.9, 3.8))  # hand: g1 + 0.9*buf1 = [1, 2] + 0.9*[1, 2]
    torch.testing.assert_close(outs[1], t(6.51, -0.28))  # hand: [3, -1] + 0.9*[3.9, 0.8]
    torch.testing.assert_close(state.trace["x"], t(3.9, 0.8))  # the buffer is the heavy-ball one


def test_adam_bias_corrected_two_steps():
    # b1=0.5, b2=0.75, eps=0. Step 1, g=2: m=1, v=1; m_hat=1/0.5=2, v_hat=1/0.25=4 -> 2/2 = 1.
    # Step 2, g=4: m=0.5+2=2.5, v=0.75+4=4.75; m_hat=2.5/0.75, v_hat=4.75/0.4375=76/7 -> (10/3)/sqrt(76/7).
    outs, state = run(scale_by_adam(0.5, 0.75, 0.0), [t(2.0), t(4.0)])
    torch.testing.assert_close(outs[0], t(1.0))
    torch.testing.assert_close(outs[1], t((10 / 3) / math.sqrt(76 / 7)))
    torch.testing.assert_close(state.mu["x"], t(2.5))
    torch.testing.assert_close(state.nu["x"], t(4.75))
    assert state.count.dtype == torch.int64 and int(state.count) == 2


def test_adam_without_bias_correction_is_fedadam():
    # Same moments as above, raw: step 1 -> 1/sqrt(1) = 1; step 2 -> 2.5/sqrt(4.75).
    outs, _ = run(scale_by_adam(0.5, 0.75, 0.0, bias_correction=False), [t(2.0), t(4.0)])
    torch.testing.assert_close(torch.cat(outs), t(1.0, 2.5 / math.sqrt(4.75)))


def test_adam_eps_and_eps_root_placement():
    # Raw moments after g=2 (b1=0.5, b2=0.75): m=1, v=1. eps outside: 1/(sqrt(1)+1) = 0.5;
    # eps_root inside: 1/sqrt(1+3) = 0.5; both: 1/(sqrt(1+3)+2) = 0.25.
    for kwargs, expected in [
        ({"eps": 1.0}, 0.5),
        ({"eps": 0.0, "eps_root": 3.0}, 0.5),
        ({"eps": 2.0, "eps_root": 3.0}, 0.25),
    ]:
        eps = kwargs.pop("eps")
        (out,), _ = run(scale_by_adam(0.5, 0.75, eps, bias_correction=False, **kwargs), [t(2.0)])
        torch.testing.assert_close(out, t(expected))


def test_yogi_all_sign_branches():
    # b1=0.5, b2=0.75, eps=0, v0=0; v <- v - 0.25*g^2*sign(v - g^2), m as in Adam, out m/sqrt(v).
    # g=2:   m=1,      v=0+0.25*4=1         (sign -1)  -> 1/1
    # g=1:   m=1,      v=1-0=1              (sign  0)  -> 1/1
    # g=0.5: m=0.75,   v=1-0.25*0.25=0.9375 (sign +1)  -> 0.75/sqrt(0.9375)
    # g=4:   m=2.375,  v=0.9375+4=4.9375    (sign -1)  -> 2.375/sqrt(4.9375)
    outs, state = run(scale_by_yogi(0.5, 0.75, 0.0), [t(2.0), t(1.0), t(0.5), t(4.0)])
    expected = t(1.0, 1.0, 0.75 / math.sqrt(0.9375), 2.375 / math.sqrt(4.9375))
    torch.testing.assert_close(torch.cat(outs), expected)
    torch.testing.assert_close(state.nu["x"], t(4.9375))


def test_yogi_initial_v_and_bias_correction():
    # v0=4, g=2: v = 4 - 0.25*4*sign(0) = 4, m = 1. Bias-corrected: m_hat=1/0.5=2, v_hat=4/0.25=16 -> 2/4 = 0.5.
    (out,), _ = run(scale_by_yogi(0.5, 0.75, 0.0, initial_v=4.0, bias_correction=True), [t(2.0)])
    torch.testing.assert_close(out, t(0.5))


def test_add_decayed_weights():
    wd = add_decayed_weights(0.1)
    out, _ = wd.update({"x": t(1.0)}, wd.init({"x": t(2.0)}), {"x": t(2.0)})
    torch.testing.assert_close(out["x"], t(1.2))  # hand: 1 + 0.1*2
    with pytest.raises(ValueError, match="params"):
        wd.update({"x": t(1.0)}, wd.init({"x": t(2.0)}))


def test_clip_above_below_zero():
    clip = clip_by_global_norm(1.0)
    state = clip.init({"a": t(0.0), "b": t(0.0)})
    above, _ = clip.update({"a": t(3.0), "b": t(4.0)}, state)
    torch.testing.assert_close(above, {"a": t(0.6), "b": t(0.8)})  # hand: norm 5 -> scale by 1/5
    below = {"a": t(0.3), "b": t(0.4)}
    out, _ = clip.update(below, state)
    assert all(torch.equal(out[k], below[k]) for k in below)  # hand: norm 0.5 <= 1 -> exactly unchanged
    zero, _ = clip.update({"a": t(0.0, 0.0), "b": t(0.0)}, state)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in zero.values())  # no 0/0


def test_clip_per_client_with_batch_dims():
    clip = clip_by_global_norm(1.0, batch_dims=1)
    grads = {"a": t(3.0, 0.3, 0.0).reshape(3, 1), "b": t(4.0, 0.4, 0.0).reshape(3, 1)}
    out, _ = clip.update(grads, clip.init(grads))
    # hand: client norms 5, 0.5, 0 -> factors 1/5, 1, 1
    torch.testing.assert_close(out["a"], t(0.6, 0.3, 0.0).reshape(3, 1))
    torch.testing.assert_close(out["b"], t(0.8, 0.4, 0.0).reshape(3, 1))
    torch.testing.assert_close(global_norm(grads, batch_dims=1), t(5.0, 0.5, 0.0))


def test_global_norm_scalar_tensors_with_batch_dims():
    # a tensor of shape [K] stacks K scalars: nothing left to reduce (torch.sum(dim=()) would reduce all axes)
    norms = global_norm({"s": t(3.0, 0.0), "v": t(4.0, 0.0, 1.0, 1.0).reshape(2, 2)}, batch_dims=1)
    torch.testing.assert_close(norms, t(5.0, math.sqrt(2.0)))  # hand: sqrt(9+16+0), sqrt(0+1+1)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_clip_rejects_bad_max_norm(bad):
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_global_norm(bad)
