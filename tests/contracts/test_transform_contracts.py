"""The contract every gradient-core transform keeps, for each entry of ``TRANSFORMS`` (a new transform joins by
adding a line): structure kept, deterministic, state survives ``torch.save``/``torch.load``, and a stacked cohort
(``batch_dims=1``) gives what its clients give one by one."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch

from fedsim import gradcore
from fedsim.gradcore import GradientTransformation
from fedsim.gradcore.compose import repeat, reset_every
from fedsim.gradcore.dp import clip_layers_independent, clip_layers_pelikan, normalize_layers
from fedsim.gradcore.layers import clip_per_layer, scale_by_trust_ratio
from fedsim.gradcore.layerwise import norm_growth_limit
from fedsim.gradcore.normalize import multi_normalize, normalize_axis, whiten_newton_schulz
from fedsim.gradcore.partition import masked, partition
from fedsim.gradcore.quantize import quantized_state

ROLES = {"w1": "matrix", "b1": "vector", "w2": "output", "b2": "vector"}

# name -> factory(batch_dims) -> transform
TRANSFORMS: dict[str, Callable[[int], GradientTransformation]] = {
    "identity": lambda bd: gradcore.identity(),
    "scale": lambda bd: gradcore.scale(-0.5),
    "scale_by_learning_rate": lambda bd: gradcore.scale_by_learning_rate(0.1),
    "scale_by_schedule": lambda bd: gradcore.scale_by_schedule(lambda c: 1.0 / (1.0 + c.double())),
    "add_decayed_weights": lambda bd: gradcore.add_decayed_weights(0.1),
    "trace": lambda bd: gradcore.trace(0.9),
    "trace_nesterov": lambda bd: gradcore.trace(0.9, nesterov=True),
    "scale_by_adam": lambda bd: gradcore.scale_by_adam(),
    "scale_by_adam_no_bias_correction": lambda bd: gradcore.scale_by_adam(bias_correction=False),
    "scale_by_yogi": lambda bd: gradcore.scale_by_yogi(),
    "clip_by_global_norm": lambda bd: gradcore.clip_by_global_norm(1.0, batch_dims=bd),
    "chain": lambda bd: gradcore.chain(gradcore.clip_by_global_norm(1.0, batch_dims=bd), gradcore.trace(0.5)),
    "scale_by_adam_hat": lambda bd: gradcore.scale_by_adam(eps_mode="hat"),
    "clip_per_layer": lambda bd: clip_per_layer(0.5, batch_dims=bd),
    "clip_layers_independent_uniform": lambda bd: clip_layers_independent(0.5, batch_dims=bd),
    "clip_layers_independent_dimension": lambda bd: clip_layers_independent(
        0.5, rule="dimension", batch_dims=bd
    ),
    "clip_layers_pelikan_uniform": lambda bd: clip_layers_pelikan(1.0, batch_dims=bd),
    "clip_layers_pelikan_dimension": lambda bd: clip_layers_pelikan(1.0, rule="dimension", batch_dims=bd),
    "normalize_layers": lambda bd: normalize_layers(batch_dims=bd),
    "scale_by_trust_ratio": lambda bd: scale_by_trust_ratio(batch_dims=bd),
    "repeat": lambda bd: repeat(gradcore.clip_by_global_norm(1.0, batch_dims=bd), 2),
    "reset_every": lambda bd: reset_every(gradcore.scale_by_adam(), 3),
    "normalize_axis_rms_rows": lambda bd: normalize_axis(-1, stat="rms", batch_dims=bd),
    "normalize_axis_std_centered": lambda bd: normalize_axis(-1, stat="std", center=True, batch_dims=bd),
    "whiten_newton_schulz": lambda bd: whiten_newton_schulz(10, batch_dims=bd),
    "multi_normalize": lambda bd: multi_normalize(5, batch_dims=bd),
    "norm_growth_limit": lambda bd: norm_growth_limit(1.01, batch_dims=bd),
    "quantized_state_adam": lambda bd: quantized_state(
        gradcore.scale_by_adam(), batch_dims=bd, block_size=8, min_size=1
    ),
    "masked_output_only": lambda bd: masked(gradcore.scale_by_adam(), ["output"], ROLES),
    "partition_by_role": lambda bd: partition(
        {"matrix": gradcore.trace(0.9), "output": gradcore.scale_by_adam(), "vector": gradcore.scale(2.0)},
        ROLES,
    ),
}


RANDOM_TRANSFORMS: dict[str, Callable[[int], GradientTransformation]] = {
    "add_gaussian_noise": lambda bd: gradcore.add_gaussian_noise(0.1, seed=0),
}
"""Transforms whose randomness is their state: they join the determinism and checkpoint contracts, not the
stacked-cohort one (a stacked cohort draws one ``[K, ...]`` tensor per name, a client loop each client's in turn)."""
ALL = {**TRANSFORMS, **RANDOM_TRANSFORMS}


def tree(gen: torch.Generator, lead: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    shapes = {"w1": (5, 4), "b1": (5,), "w2": (3, 5), "b2": (3,)}
    return {k: torch.randn(*lead, *s, generator=gen) for k, s in shapes.items()}


def run(tx: GradientTransformation, params, grads_seq):
    state = tx.init(params)
    for g in grads_seq:
        u, state = tx.update(g, state, params)
        params = gradcore.apply_updates(params, u)
    return params, state


@pytest.mark.parametrize("name", sorted(ALL))
def test_structure_and_determinism(name):
    gen = torch.Generator().manual_seed(0)
    params = tree(gen)
    grads = [tree(gen) for _ in range(4)]
    a, _ = run(ALL[name](0), params, grads)
    b, _ = run(ALL[name](0), params, grads)
    assert list(a) == list(params)
    assert all(a[k].shape == params[k].shape and torch.equal(a[k], b[k]) for k in params)


@pytest.mark.parametrize("name", sorted(ALL))
def test_state_survives_a_checkpoint(name):
    gen = torch.Generator().manual_seed(1)
    params, grads = tree(gen), [tree(gen) for _ in range(6)]
    tx = ALL[name](0)
    straight, _ = run(tx, params, grads)
    p, state = run(tx, params, grads[:3])
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    for g in grads[3:]:
        u, state = tx.update(g, state, p)
        p = gradcore.apply_updates(p, u)
    assert all(torch.equal(p[k], straight[k]) for k in params)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_a_stacked_cohort_equals_its_clients_one_by_one(name):
    gen = torch.Generator().manual_seed(2)
    k = 3
    params, grads = tree(gen, (k,)), [tree(gen, (k,)) for _ in range(5)]
    stacked, _ = run(TRANSFORMS[name](1), params, grads)
    for i in range(k):
        one, _ = run(
            TRANSFORMS[name](0),
            {n: v[i] for n, v in params.items()},
            [{n: v[i] for n, v in g.items()} for g in grads],
        )
        for n in params:
            torch.testing.assert_close(stacked[n][i], one[n], rtol=1e-4, atol=1e-5)  # fp32 batched matmuls
