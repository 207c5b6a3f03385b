"""SCALE, SWAN and SinkGD: the spec's worked numbers, their invariants, stacking, and training a small MLP.

Oracles: the worked numbers of the optimizer spec (hand-computed), a float64 SVD polar factor for the
whitening, explicit per-client loops for the stacked chains, and the SCALE reference code's formulas written out.
"""

from __future__ import annotations

import math

import pytest
import torch

from clients.optimizers import build, make_chain
from fedsim.gradcore.base import apply_updates
from fedsim.gradcore.normalize import (
    multi_normalize,
    normalize_axis,
    polar_newton_schulz,
    whiten_newton_schulz,
)
from fedsim.gradcore.partition import param_roles

SCALE_G = torch.tensor([[3.0, 4.0], [0.0, 5.0], [1.0, -1.0]], dtype=torch.float64)
SWAN_G = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 3.0, 1.0]], dtype=torch.float64)
SINK_G = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], dtype=torch.float64)


def _apply(tx, g: torch.Tensor) -> torch.Tensor:
    out, _ = tx.update({"w": g}, tx.init({"w": g}))
    return out["w"]


def _svd_polar(x: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    return u @ vh


def test_scale_row_rule_matches_spec_and_rows_have_unit_rms():
    u = _apply(normalize_axis(-1, stat="rms"), SCALE_G)
    # spec worked numbers (hand computed: row / sqrt(mean(row^2)))
    expected = torch.tensor([[0.848528, 1.131371], [0.0, 1.414214], [1.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(u, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(u.square().mean(dim=1).sqrt(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(u.norm(dim=1), torch.full((3,), math.sqrt(2), dtype=torch.float64))


def test_scale_embedding_rule_matches_spec():
    u = _apply(normalize_axis(-2, stat="rms"), SCALE_G)
    expected = torch.tensor(
        [[1.643168, 1.069045], [0.0, 1.336306], [0.547723, -0.267261]], dtype=torch.float64
    )  # spec: column / RMS over dim 0
    torch.testing.assert_close(u, expected, rtol=0, atol=1e-6)


def test_normalize_axis_flattens_conv_weights_and_keeps_zero_rows_zero():
    g = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    g[1] = 0.0
    u = _apply(normalize_axis(-1, stat="rms"), g)
    rms = u.reshape(4, -1).square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert u.shape == g.shape and torch.isfinite(u).all()


def test_swan_gradnorm_then_whitening_matches_spec_and_svd():
    gn = _apply(normalize_axis(-1, stat="std", center=True), SWAN_G)
    torch.testing.assert_close(gn.mean(dim=1), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(gn.std(dim=1, correction=0), torch.ones(2, dtype=torch.float64))
    delta = _apply(whiten_newton_schulz(10), gn)
    expected = torch.tensor(
        [[0.217322, 0.527381, 0.073378, -0.818081], [-0.057598, -0.500558, 0.822380, -0.264225]],
        dtype=torch.float64,
    )  # spec worked numbers
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-6)
    exact = _svd_polar(gn)  # oracle: SVD polar factor in float64
    err5 = (polar_newton_schulz(gn, 5) - exact).abs().max().item()
    err10 = (polar_newton_schulz(gn, 10) - exact).abs().max().item()
    assert 5e-6 < err5 < 2e-5  # spec: ~1e-5 after 5 steps
    assert err10 < 1e-14  # spec: ~3e-16 after 10 steps


@pytest.mark.parametrize("shape", [(5, 8), (8, 5)])  # wide, and tall (transposed path)
def test_whitening_gives_orthonormal_rows_or_columns(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    delta = _apply(whiten_newton_schulz(40), g)
    small = min(shape)
    gram = delta @ delta.T if shape[0] <= shape[1] else delta.T @ delta
    torch.testing.assert_close(gram, torch.eye(small, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(delta, _svd_polar(g), rtol=0, atol=1e-10)
    matched = _apply(whiten_newton_schulz(40, match_norm=True), g)
    torch.testing.assert_close(matched.norm(), g.norm())


def test_whitening_a_zero_gradient_gives_zero():
    out = _apply(whiten_newton_schulz(10, match_norm=True), torch.zeros(3, 4))
    assert torch.equal(out, torch.zeros(3, 4))


def test_sinkgd_five_rounds_match_spec():
    out = _apply(multi_normalize(5), SINK_G)
    expected = torch.tensor(
        [[1.138089, 1.138089, 0.640893], [0.839496, -0.839496, 1.260657]], dtype=torch.float64
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)  # spec worked numbers
    torch.testing.assert_close(
        out.norm(dim=0), torch.full((3,), math.sqrt(2), dtype=torch.float64), rtol=0, atol=1e-14
    )
    torch.testing.assert_close(
        out.norm(dim=1), torch.tensor([1.7324074, 1.7316942], dtype=torch.float64), rtol=0, atol=1e-7
    )


def test_scale_output_momentum_and_vector_adamw_follow_the_reference_formulas():
    lr, adam_lr, b1, b2, eps = 0.01, 0.003, 0.9, 0.999, 1e-8
    gen = torch.Generator().manual_seed(5)
    params = {
        "w": torch.randn(3, 4, generator=gen),
        "head": torch.randn(2, 3, generator=gen),
        "b": torch.zeros(2),
    }
    roles = {"w": "matrix", "head": "output", "b": "vector"}
    grads = [{k: torch.randn(v.shape, generator=gen) for k, v in params.items()} for _ in range(3)]
    tx = make_chain("scale", roles, lr=lr, adam_lr=adam_lr)
    state = tx.init(params)
    m_head, m_b, v_b = torch.zeros(2, 3), torch.zeros(2), torch.zeros(2)
    for t, g in enumerate(grads, start=1):
        out, state = tx.update(g, state, params)
        # reference code (OptimAI-Lab SCALE): lerp momentum, RMS row normaliser, AdamW with eps outside sqrt(v)
        rownorm = lambda x: x / x.square().mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)  # noqa: E731
        m_head = m_head + (1 - b1) * (g["head"] - m_head)
        m_b, v_b = b1 * m_b + (1 - b1) * g["b"], b2 * v_b + (1 - b2) * g["b"] ** 2
        hat = (1 - b1**t) / (1 - b2**t) ** 0.5
        torch.testing.assert_close(out["w"], -lr * rownorm(g["w"]))
        torch.testing.assert_close(out["head"], -lr * rownorm(m_head))
        torch.testing.assert_close(out["b"], -adam_lr / hat * m_b / (v_b.sqrt() + eps))


def _stack_case(k: int):
    gen = torch.Generator().manual_seed(11)
    shapes = {"emb": (6, 4), "conv": (3, 2, 2, 2), "w": (5, 8), "tall": (9, 5), "bias": (5,), "head": (2, 5)}
    roles = {"emb": "embedding", "conv": "matrix", "w": "matrix", "tall": "matrix", "bias": "vector"}
    roles["head"] = "output"
    start = {n: torch.randn(k, *s, generator=gen, dtype=torch.float64) for n, s in shapes.items()}
    grads = [
        {n: torch.randn(v.shape, generator=gen, dtype=torch.float64) for n, v in start.items()}
        for _ in range(3)
    ]
    return roles, start, grads


def _run(tx, start, grads):
    params, state = dict(start), tx.init(start)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = apply_updates(params, updates)
    return params


@pytest.mark.parametrize("name", ["scale", "swan", "sinkgd"])
def test_stacked_clients_step_as_each_client_alone(name):
    k = 3
    roles, start, grads = _stack_case(k)
    args = {"lr": 0.01, "weight_decay": 0.1}
    stacked = _run(make_chain(name, roles, batch_dims=1, **args), start, grads)
    for i in range(k):
        alone = _run(
            make_chain(name, roles, **args),
            {n: v[i] for n, v in start.items()},
            [{n: v[i] for n, v in g.items()} for g in grads],
        )
        for n in start:
            torch.testing.assert_close(stacked[n][i], alone[n], rtol=1e-10, atol=1e-12)


def test_param_roles_with_client_dims_route_stacked_vectors_to_vector():
    _, start, _ = _stack_case(2)
    roles = param_roles(start, embeddings=["emb"], client_dims=1)
    assert roles["bias"] == "vector" and roles["emb"] == "embedding" and roles["head"] == "output"


@pytest.mark.parametrize(("name", "lr"), [("scale", 0.01), ("swan", 0.01), ("sinkgd", 0.02)])
def test_registered_optimizer_trains_a_small_mlp(name, lr):
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = torch.sin(x @ torch.randn(8, 1)) + 0.1 * x[:, :1]
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 1),
    )
    opt = build(name, model.named_parameters(), lr=lr)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.4 * losses[0]  # about 0.33 (SCALE, SinkGD) and 0.03 (SWAN) here


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (normalize_axis, {"stat": "mad"}),
        (normalize_axis, {"axis": 0}),
        (whiten_newton_schulz, {"steps": 0}),
        (multi_normalize, {"rounds": 0}),
    ],
)
def test_invalid_arguments_are_rejected(factory, kwargs):
    with pytest.raises(ValueError):
        factory(**kwargs)
