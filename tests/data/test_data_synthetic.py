"""Synthetic(alpha, beta): the per-user count rule, the per-user test hold-out and the heterogeneity knobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from data_helpers import load


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def test_natural_partition_sizes_follow_the_lognormal_count_rule():
    """Oracle: the closed-form CDF of floor(LogNormal(mu, sigma)) + min, compared with a KS-style bound."""
    mu, sigma, low, users = 2.0, 1.0, 5, 600
    data = load(
        dataset="synthetic",
        args={"dim": 2, "samples": {"dist": "lognormal", "mean": mu, "sigma": sigma, "min": low}},
        partitioner="natural",
        test_fraction=0.0,  # every example stays with its user, so partition size == drawn count
        num_clients=users,
    )
    sizes = np.array([data.num_examples(c) for c in range(users)])
    assert sizes.min() >= low
    extra = sizes - low
    # P(extra <= m) = P(LogNormal < m + 1) = Phi((ln(m + 1) - mu) / sigma)
    grid = np.unique(np.quantile(extra, np.linspace(0.05, 0.95, 19)).astype(int))
    gap = max(abs((extra <= m).mean() - _normal_cdf((math.log(m + 1) - mu) / sigma)) for m in grid)
    assert gap < 1.95 / math.sqrt(users)  # KS critical value at the 0.1% level


def test_default_counts_add_fedprox_minimum_of_50():
    data = load(dataset="synthetic", partitioner="natural", test_fraction=0.0, num_clients=40)
    assert min(data.num_examples(c) for c in range(40)) >= 50


def test_each_user_holds_out_its_share_for_the_central_test_set():
    n, users, fraction = 40, 25, 0.2
    data = load(
        dataset="synthetic",
        args={"samples": {"dist": "constant", "value": n}},
        partitioner="natural",
        test_fraction=fraction,
        num_clients=users,
    )
    n_test = round(fraction * n)
    assert all(data.num_examples(c) == n - n_test for c in range(users))
    assert len(data.test_y) == users * n_test
    assert data.input_shape == (60,) and data.test_x.shape == (users * n_test, 60)


@pytest.mark.parametrize("classes", [2, 10, 17])
def test_labels_in_range(classes):
    data = load(dataset="synthetic", args={"classes": classes, "dim": 8}, partitioner="iid", num_clients=10)
    assert data.num_classes == classes
    for y in (data.train_y, data.test_y):
        assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < classes


def _user_feature_means(alpha: float, beta: float, users: int = 200) -> np.ndarray:
    data = load(
        dataset="synthetic",
        args={"alpha": alpha, "beta": beta, "samples": {"dist": "constant", "value": 30}},
        partitioner="natural",
        num_clients=users,
    )
    return np.array([float(data.client_data(c)[0].mean()) for c in range(users)])


def test_beta_spreads_the_users_feature_distributions():
    """Oracle (closed form): a user's mean feature is mean_j v_kj ~ N(B_k, 1/dim), B_k ~ N(0, beta), so its
    spread across users is sqrt(beta^2 + 1/dim) (+ a sampling term of order 1/sqrt(dim * n), negligible)."""
    dim = 60
    for alpha, beta in ((0.0, 0.0), (1.0, 1.0)):
        spread = _user_feature_means(alpha, beta).std()
        expected = math.sqrt(beta**2 + 1.0 / dim)
        assert 0.8 * expected < spread < 1.25 * expected, (alpha, beta, spread, expected)
    # Synthetic(1, 1) is far more heterogeneous than Synthetic(0, 0): ~1.0 vs ~0.13
    assert _user_feature_means(1.0, 1.0).std() > 4 * _user_feature_means(0.0, 0.0).std()


def test_iid_variant_shares_one_feature_distribution():
    data = load(dataset="synthetic", args={"iid": True}, partitioner="natural", num_clients=50)
    means = np.array([float(data.client_data(c)[0].mean()) for c in range(50)])
    assert means.std() < 0.1  # v = 0 for everyone: only sampling noise remains
    # shared W, b: every user's labels come from one model, so the per-user label mixes agree
    non_iid = load(dataset="synthetic", partitioner="natural", num_clients=50)

    def label_spread(d):
        shares = np.stack(
            [np.bincount(d.client_data(c)[1].numpy(), minlength=10) / d.num_examples(c) for c in range(50)]
        )
        return shares.std(axis=0).mean()

    assert label_spread(data) < 0.5 * label_spread(non_iid)


def test_alpha_does_not_change_labels_softmax_shift_invariance():
    """Law of the reference generator: u_k adds u_k * (sum(x) + 1) to every logit, which argmax ignores.
    With the same seed the draws coincide, so Synthetic(0, b) and Synthetic(3, b) are bit-identical."""
    a = load(dataset="synthetic", args={"alpha": 0.0}, partitioner="natural")
    b = load(dataset="synthetic", args={"alpha": 3.0}, partitioner="natural")
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.train_x, b.train_x)
