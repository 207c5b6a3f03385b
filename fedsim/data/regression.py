"""Offline regression data for DIFF2's setting (squared loss, a scalar target): ``diabetes`` and ``regression``.

Why this module exists: DIFF2's experiments (Murata & Suzuki, ICML 2023) fit a one-hidden-layer network with the
squared loss to regression data (California Housing, 20 640 × 8, and others), which fedsim cannot download.
``diabetes`` is scikit-learn's diabetes data, shipped inside the package (no download); ``regression`` is a
generated problem of any size (default California Housing's 20 640 × 8) with a nonlinear teacher. Both return
float32 targets with ``task="regression"`` and one output (``num_classes`` = 1). Features and target are
standardised with the *training* split's mean and standard deviation, so the test set never informs them.
"""

from __future__ import annotations

import numpy as np

from fedsim.argspec import ArgSpec, declares, num
from fedsim.data.base import DATASETS, GENERATE, TEST_SPLIT, TRAIN_LABELS, DataRequest, SplitData, TrainLabels
from fedsim.errors import ConfigError

# Guard against a typo asking for gigabytes of generated data.
MAX_VALUES = 10**9
_TEACHER_UNITS = 16


def _split_and_standardise(x: np.ndarray, y: np.ndarray, request: DataRequest) -> SplitData:
    """A seeded random ``test_fraction`` split (at least one example each side), then both sides standardised
    with the training side's statistics."""
    n = len(y)
    n_test = _test_count(n, request.test_fraction)
    order = request.rng(TEST_SPLIT).permutation(n)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    mx, sx = x[train].mean(axis=0), x[train].std(axis=0)
    sx = np.where(sx > 0, sx, 1.0)
    my, sy = y[train].mean(), y[train].std()
    sy = sy if sy > 0 else 1.0
    scale_x = lambda a: ((a - mx) / sx).astype(np.float32)  # noqa: E731
    scale_y = lambda a: ((a - my) / sy).astype(np.float32)  # noqa: E731
    return SplitData(
        train_x=scale_x(x[train]),
        train_y=scale_y(y[train]),
        test_x=scale_x(x[test]),
        test_y=scale_y(y[test]),
        num_classes=1,
        task="regression",
    )


@DATASETS.register("diabetes")
@declares(ArgSpec(), task="regression")
def diabetes(request: DataRequest) -> SplitData:
    """scikit-learn's diabetes data: 442 patients, 10 features, a disease-progression target (regression).

    ``data.args`` takes no keys. The central test set is a seeded random ``test_fraction`` split.

    References:
        Efron, B., Hastie, T., Johnstone, I. and Tibshirani, R., "Least Angle Regression", Annals of Statistics
        32(2), 2004 (the data, shipped as ``sklearn.datasets.load_diabetes``).
    """
    from sklearn.datasets import load_diabetes  # imported here: importing sklearn takes about a second

    x, y = load_diabetes(return_X_y=True)
    return _split_and_standardise(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), request)


def _test_count(n: int, test_fraction: float) -> int:
    """Examples held out: ``round(test_fraction · n)``, at least one and at most ``n − 1``."""
    return min(max(int(round(test_fraction * n)), 1), n - 1)


@TRAIN_LABELS.register("regression")
def regression_train_count(request: DataRequest) -> TrainLabels:
    """The number of training examples, ``n`` less the test split (no labels: the target is real-valued)."""
    n = request.args["n"]
    return TrainLabels(count=n - _test_count(n, request.test_fraction), labels=None, users=None)


@DATASETS.register("regression")
@declares(
    ArgSpec(
        (num("n", 20640, integer=True, low=2), num("d", 8, integer=True, low=1), num("noise", 0.1, low=0))
    ),
    task="regression",
)
def regression(request: DataRequest) -> SplitData:
    """A generated regression problem: x ~ N(0, I_d), y = Σ_k a_k tanh(w_kᵀx/√d + b_k) + x_1/2 + noise·N(0, 1).

    The teacher (16 tanh units, a_k, w_k, b_k ~ N(0, 1), plus a linear term) is drawn from the run seed, so the
    data are deterministic in it. ``data.args``: ``n`` (20640, California Housing's size), ``d`` (8), ``noise``
    (0.1, before standardisation).
    """
    args = request.args
    n, d, noise = args["n"], args["d"], float(args["noise"])
    if n * d > MAX_VALUES:
        raise ConfigError("data.args", f"n·d <= {MAX_VALUES:.0e}", dict(request.args))
    rng = request.rng(GENERATE)
    w = rng.standard_normal((_TEACHER_UNITS, d))
    b = rng.standard_normal(_TEACHER_UNITS)
    a = rng.standard_normal(_TEACHER_UNITS)
    x = rng.standard_normal((n, d))
    y = np.tanh(x @ w.T / np.sqrt(d) + b) @ a + 0.5 * x[:, 0] + noise * rng.standard_normal(n)
    return _split_and_standardise(x, y, request)
