"""MNIST-1D generated locally: shape, balance, determinism, and the reference's difficulty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import load
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from fedsim.data import mnist1d


@pytest.fixture(scope="module")
def default_data():
    return load(dataset="mnist1d", num_clients=10, seed=0)


def test_shape_and_balance(default_data):
    d = default_data
    assert d.input_shape == (40,) and d.num_classes == 10
    assert d.train_x.shape == (4000, 40) and d.test_x.shape == (1000, 40)  # reference: 5000 = 4000 + 1000
    assert torch.equal(torch.bincount(d.train_y, minlength=10), torch.full((10,), 400))
    assert torch.equal(torch.bincount(d.test_y, minlength=10), torch.full((10,), 100))
    pooled = torch.cat([d.train_x, d.test_x])
    assert abs(float(pooled.mean())) < 1e-4 and abs(float(pooled.std()) - 1.0) < 1e-3  # standardised


def test_deterministic_under_seed():
    a = load(dataset="mnist1d", args={"num_samples": 500}, seed=3)
    b = load(dataset="mnist1d", args={"num_samples": 500}, seed=3)
    c = load(dataset="mnist1d", args={"num_samples": 500}, seed=4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_templates_match_the_reference_whitening():
    """Oracle: the reference's get_templates() post-conditions (start at 0, std 1/6 per template)."""
    t = mnist1d.templates()
    assert t.shape == (10, 12)
    np.testing.assert_allclose(t[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(t.std(axis=1), 1 / 6, rtol=1e-12)


def test_noise_free_examples_are_the_scaled_template_when_all_transforms_are_off():
    """With padding, scale, shift, shear and noise off, an example is the template resampled to 40 points,
    then globally standardised: its correlation with the resampled template is 1."""
    rng = np.random.default_rng(0)
    x, y = mnist1d.generate(
        num_samples=10,
        rng=rng,
        padding=(0, 0),
        scale_coeff=0.0,
        max_translation=1,
        corr_noise_scale=0.0,
        iid_noise_scale=0.0,
        shear_scale=0.0,
        shuffle_seq=False,
        final_seq_length=40,
    )
    template = np.interp(np.linspace(0, 1, 40), np.linspace(0, 1, 12), mnist1d.templates()[y[0]])
    assert np.corrcoef(x[0], template)[0, 1] > 0.999


def test_logistic_regression_is_clearly_above_chance(default_data):
    """The reference reports ~32% test accuracy for logistic regression (chance 10%); we measured 31.7% (seed 0)
    and 33.7% (seed 1); a small sklearn MLP(100, 100) reaches 61-63% (reference: 68%)."""
    d = default_data
    # One BLAS thread: torch's and numpy/scipy's OpenBLAS/OpenMP pools otherwise oversubscribe (0.08 s -> 10 s).
    with threadpool_limits(limits=1):
        clf = LogisticRegression(max_iter=1000).fit(d.train_x.numpy(), d.train_y.numpy())
    accuracy = clf.score(d.test_x.numpy(), d.test_y.numpy())
    assert 0.25 < accuracy < 0.5  # clearly above chance, and not trivially linearly separable
