"""Offline regression data (``diabetes``, ``regression``): shapes, determinism, standardisation, partitioners; the
softplus MLP with one output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.data import load_federated_data
from fedsim.errors import ConfigError
from fedsim.models import build_model


def load(dataset, *, args=None, partitioner="iid", seed=0, clients=4):
    return load_federated_data(
        dataset=dataset,
        args=args or {},
        partitioner=partitioner,
        partitioner_args={},
        test_fraction=0.2,
        num_clients=clients,
        seed=seed,
    )


def test_diabetes_is_sklearns_442_by_10_split_and_standardised_on_the_training_side():
    d = load("diabetes")
    assert d.task == "regression" and d.num_classes == 1 and d.input_shape == (10,)
    assert len(d.train_y) + len(d.test_y) == 442 and len(d.test_y) == round(0.2 * 442)
    assert d.train_y.dtype == torch.float32 and d.test_y.dtype == torch.float32
    torch.testing.assert_close(d.train_x.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.train_x.std(0, unbiased=False), torch.ones(10), atol=1e-4, rtol=0)
    assert float(d.train_y.mean()) == pytest.approx(0.0, abs=1e-5)
    assert sum(d.num_examples(c) for c in range(4)) == len(d.train_y)
    # the raw target is recovered up to the affine standardisation (sklearn's own copy is the oracle)
    from sklearn.datasets import load_diabetes

    y = load_diabetes().target
    pooled = np.sort(np.concatenate([d.train_y.numpy(), d.test_y.numpy()]))
    raw = np.sort((y - y.mean()) / y.std())  # same order statistics up to a positive affine map
    assert np.corrcoef(pooled, raw)[0, 1] > 0.9999


def test_generated_regression_has_california_housings_size_and_is_deterministic_in_the_seed():
    a, b, c = load("regression"), load("regression"), load("regression", seed=1)
    assert a.input_shape == (8,) and len(a.train_y) + len(a.test_y) == 20640
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_y, c.train_y)
    small = load("regression", args={"n": 300, "d": 3, "noise": 0.0})
    assert small.input_shape == (3,) and len(small.train_y) + len(small.test_y) == 300
    # a nonlinear teacher: the best linear fit leaves a residual although there is no label noise
    x = torch.cat([small.train_x, torch.ones(len(small.train_x), 1)], dim=1).double()
    beta = torch.linalg.lstsq(x, small.train_y.double().unsqueeze(1)).solution
    residual = float(((x @ beta).squeeze(1) - small.train_y.double()).pow(2).mean())
    assert 0.01 < residual < 0.9


@pytest.mark.parametrize("partitioner", ["dirichlet", "pathological", "shard"])
def test_label_partitioners_are_refused_for_regression(partitioner):
    with pytest.raises(ConfigError) as err:
        load("diabetes", partitioner=partitioner)
    assert err.value.field == "data.partitioner" and "\n" not in str(err.value)


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigError, match="data.args"):
        load("regression", args={"rows": 5})
    with pytest.raises(ConfigError, match="data.args"):
        load("diabetes", args={"n": 5})


def test_softplus_mlp_with_one_output_and_bad_activation():
    m = build_model(
        "mlp", {"hidden": [10], "activation": "softplus"}, input_shape=(8,), num_classes=1, seed=0
    )
    assert isinstance(m[2], torch.nn.Softplus) and m(torch.zeros(3, 8)).shape == (3, 1)
    assert sum(p.numel() for p in m.parameters()) == 8 * 10 + 10 + 10 + 1
    relu = build_model("mlp", {}, input_shape=(8,), num_classes=10, seed=0)
    assert isinstance(relu[2], torch.nn.ReLU)
    with pytest.raises(ConfigError, match="model.args.activation"):
        build_model("mlp", {"activation": "tanh"}, input_shape=(8,), num_classes=1)


def _todays_population(n, d, noise, seed, test_fraction, clients):
    """Oracle for ``draw: population``: the generator and split exactly as they were before ``draw: client``
    (a verbatim copy), so the default path stays bit-identical."""
    from fedsim.data.base import GENERATE, PARTITION, TEST_SPLIT, DataRequest
    from fedsim.data.partitioners import iid_offsets

    req = DataRequest({}, None, "regression", "iid", {}, test_fraction, clients, seed)
    rng = req.rng(GENERATE)
    w = rng.standard_normal((16, d))
    b = rng.standard_normal(16)
    a = rng.standard_normal(16)
    x = rng.standard_normal((n, d))
    y = np.tanh(x @ w.T / np.sqrt(d) + b) @ a + 0.5 * x[:, 0] + noise * rng.standard_normal(n)
    n_test = min(max(int(round(test_fraction * n)), 1), n - 1)
    order = req.rng(TEST_SPLIT).permutation(n)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    mx, sx = x[train].mean(axis=0), x[train].std(axis=0)
    sx = np.where(sx > 0, sx, 1.0)
    my, sy = y[train].mean(), y[train].std()
    sy = sy if sy > 0 else 1.0
    parts = req.rng(PARTITION).permutation(len(train))
    return (
        ((x[train] - mx) / sx).astype(np.float32),
        ((y[train] - my) / sy).astype(np.float32),
        ((x[test] - mx) / sx).astype(np.float32),
        ((y[test] - my) / sy).astype(np.float32),
        parts,
        iid_offsets(len(train), clients),
    )


@pytest.mark.parametrize("draw", [None, "population"])
def test_population_draw_is_bit_identical_to_the_generator_before_client_draws(draw):
    args = {"n": 700, "d": 5, "noise": 0.3, **({"draw": draw} if draw else {})}
    d = load("regression", args=args, seed=11, clients=7)
    tx, ty, vx, vy, idx, off = _todays_population(700, 5, 0.3, 11, 0.2, 7)
    for got, want in ((d.train_x, tx), (d.train_y, ty), (d.test_x, vx), (d.test_y, vy)):
        assert np.array_equal(got.numpy(), want)
    assert np.array_equal(d.partitions.indices, idx) and np.array_equal(d.partitions.offsets, off)


def _teacher(seed, d):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((16, d)), rng.standard_normal(16), rng.standard_normal(16)


@pytest.mark.parametrize("d", [1, 2])
def test_target_moments_equal_a_direct_integral_over_x(d):
    """Oracle: E[y] and E[y²] integrated over x itself on a fine grid (d = 1, 2), not through the units' pairs."""
    from fedsim.data.regression import target_moments

    w, b, a = _teacher(d, d)
    noise = 0.3
    step = 1e-4 if d == 1 else 1e-2  # the trapezoid rule on these analytic integrands is exact far below 1e-9
    u = np.arange(-9.0, 9.0, step)
    phi = np.exp(-u * u / 2) / np.sqrt(2 * np.pi) * step
    if d == 1:
        x, weight = u[:, None], phi
    else:
        g1, g2 = np.meshgrid(u, u, indexing="ij")
        x, weight = np.stack([g1.ravel(), g2.ravel()], axis=1), np.outer(phi, phi).ravel()
    g = np.tanh(x @ w.T / np.sqrt(d) + b) @ a + 0.5 * x[:, 0]
    mean = g @ weight
    std = np.sqrt((g * g) @ weight - mean * mean + noise * noise)
    got_mean, got_std = target_moments(w, b, a, noise)
    assert got_mean == pytest.approx(mean, abs=1e-9)
    assert got_std == pytest.approx(std, abs=1e-9)


CLIENT = {"n": 20_000, "d": 4, "noise": 0.5, "draw": "client"}


def test_client_draws_are_standardised_by_the_distributions_moments():
    """Oracle: standard errors. 16 000 training examples drawn client by client: the pooled target has mean 0
    and deviation 1 up to sampling error, the features are N(0, I); so has the test set (4000 examples)."""
    data = load("regression", args=CLIENT, clients=100)
    view = data.cohort(range(100))
    x, y = view.train_x.double(), view.train_y.double()
    n = len(y)
    assert n == 16_000 and data.task == "regression" and data.input_shape == (4,)
    assert abs(float(y.mean())) < 5 / np.sqrt(n)
    assert abs(float(y.std()) - 1) < 5 * np.sqrt(
        2 / n
    )  # s.e. of a normal-ish sample's deviation ~ 1/sqrt(2n)
    assert float(x.mean(0).abs().max()) < 5 / np.sqrt(n)
    assert float((x.std(0) - 1).abs().max()) < 5 / np.sqrt(2 * n)
    ty = data.test_y.double()
    assert len(ty) == 4000 and abs(float(ty.mean())) < 5 / np.sqrt(4000)
    pooled = load("regression", args={**CLIENT, "draw": "population"}, clients=100)

    # the same problem: a linear fit explains as much of the target in either mode (to sampling error)
    def r2(x, y):
        a = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        beta = torch.linalg.lstsq(a, y.unsqueeze(1)).solution
        return 1 - float(((a @ beta).squeeze(1) - y).pow(2).mean() / y.var(unbiased=False))

    assert r2(x, y) == pytest.approx(r2(pooled.train_x.double(), pooled.train_y.double()), abs=0.03)


def test_a_client_is_the_same_whatever_the_population_and_its_first_rows_whatever_its_size():
    small = load("regression", args={**CLIENT, "n": 200}, clients=10)  # 160 training rows: 16 a client
    large = load("regression", args={**CLIENT, "n": 20_000}, clients=1000)  # 16 000: 16 a client
    assert small.num_examples(7) == large.num_examples(7) == 16
    assert all(torch.equal(u, v) for u, v in zip(small.client_data(7), large.client_data(7), strict=True))
    bigger = load(
        "regression", args={**CLIENT, "n": 400}, clients=10
    )  # 32 a client: the first 16 are the same
    x, y = bigger.client_data(7)
    assert torch.equal(x[:16], small.client_data(7)[0]) and torch.equal(y[:16], small.client_data(7)[1])


def test_client_draw_guards_name_the_field():
    with pytest.raises(ConfigError) as info:
        load("regression", args={**CLIENT, "n": 10}, clients=20)
    assert info.value.field == "population.clients"
    with pytest.raises(ConfigError) as info:
        load("regression", args={"n": 10**9, "d": 8, "draw": "client"}, clients=2)
    assert info.value.field == "data.args" and "draw: client" in str(info.value)
