"""Offline regression data for DIFF2's setting (squared loss, a scalar target): ``diabetes`` and ``regression``.

Why this module exists: DIFF2's experiments (Murata & Suzuki, ICML 2023) fit a one-hidden-layer network with the
squared loss to regression data (California Housing, 20 640 × 8, and others), which fedsim cannot download.
``diabetes`` is scikit-learn's diabetes data, shipped inside the package (no download); ``regression`` is a
generated problem of any size (default California Housing's 20 640 × 8) with a nonlinear teacher. Both return
float32 targets with ``task="regression"`` and one output (``num_classes`` = 1). Features and target are
standardised with the *training* split's mean and standard deviation, so the test set never informs them.

``regression`` also has ``data.args.draw: client`` (populations of millions, never materialised): each client's
examples are drawn on demand from its own stream, keyed by the run seed and the client id, and standardised with
the generating distribution's exact moments instead of a sample's (see ``regression``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedsim.argspec import ArgSpec, choice, declares, num
from fedsim.data.base import (
    DATASETS,
    DRAWS,
    GENERATE,
    TEST_SPLIT,
    TRAIN_LABELS,
    ClientSource,
    DataRequest,
    SplitData,
    TrainLabels,
)
from fedsim.data.partitioners import PartitionContext, check_enough_examples, iid_offsets
from fedsim.errors import ConfigError
from fedsim.randomness import Stream, generator

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
    """The number of training examples, ``n`` less the test split (no labels: the target is real-valued); with
    ``draw: client`` also every client's size, ``iid``'s shards of that count (the same as ``population``'s)."""
    n = request.args["n"]
    count = n - _test_count(n, request.test_fraction)
    if request.args["draw"] == "client":
        sizes = np.diff(iid_offsets(count, request.num_clients))
        return TrainLabels(count=count, labels=None, users=None, client_sizes=sizes, partitioners=("iid",))
    return TrainLabels(count=count, labels=None, users=None)


@DATASETS.register("regression")
@declares(
    ArgSpec(
        (
            num("n", 20640, integer=True, low=2),
            num("d", 8, integer=True, low=1),
            num("noise", 0.1, low=0),
            choice("draw", "population", DRAWS),
        )
    ),
    task="regression",
)
def regression(request: DataRequest) -> SplitData:
    """A generated regression problem: x ~ N(0, I_d), y = Σ_k a_k tanh(w_kᵀx/√d + b_k) + x_1/2 + noise·N(0, 1).

    The teacher (16 tanh units, a_k, w_k, b_k ~ N(0, 1), plus a linear term) is drawn from the run seed, so the
    data are deterministic in it. ``data.args``: ``n`` (20640, California Housing's size), ``d`` (8), ``noise``
    (0.1, before standardisation), ``draw`` (``population``).

    ``draw: client`` (needs ``partitioner: iid``): the teacher is the same draw, and the clients' sizes are
    ``population``'s (``iid``'s shards of the ``n − round(test_fraction·n)`` training examples), but client c's
    examples come from its own stream, keyed by the seed and c (``Stream.DATA_CLIENT``), made when a round asks
    for them; the central test set (``round(test_fraction·n)`` examples) is drawn after the teacher from the run's
    stream. Nothing is ever drawn for the whole population, so features and target are standardised with the
    generating distribution's exact moments (``target_moments``): x needs none (its mean is 0 and its standard
    deviation 1), y is centred and scaled by its mean and standard deviation under the teacher. The one difference
    from ``population``, besides the numbers: there the *training sample*'s mean and deviation are used, so the
    pooled training set has mean 0 and deviation 1 exactly; here the distribution's, so it has them up to sampling
    error (O(1/√n)).
    """
    args = request.args
    n, d, noise = args["n"], args["d"], float(args["noise"])
    if args["draw"] == "client":
        return _client_drawn(request, n, d, noise)
    if n * d > MAX_VALUES:
        raise ConfigError("data.args", f"n·d <= {MAX_VALUES:.0e}", dict(request.args))
    rng = request.rng(GENERATE)
    teacher = Teacher.draw(rng, d, noise)
    x = rng.standard_normal((n, d))
    y = teacher.signal(x) + noise * rng.standard_normal(n)
    return _split_and_standardise(x, y, request)


def _client_drawn(request: DataRequest, n: int, d: int, noise: float) -> SplitData:
    """``draw: client``: the teacher and the test set from the run's stream, the clients' sizes, their draw."""
    n_test = _test_count(n, request.test_fraction)
    count = n - n_test
    clients = request.num_clients
    check_enough_examples(
        PartitionContext(num_clients=clients, num_examples=count, seed=0, dataset=request.name)
    )
    largest = -(-count // clients)  # one client at a time is ever materialised, and the test set
    if (n_test + largest) * d > MAX_VALUES:
        raise ConfigError(
            "data.args",
            f"(test examples + the largest client's) · d <= {MAX_VALUES:.0e} with draw: client",
            dict(request.args),
        )
    rng = request.rng(GENERATE)
    teacher = Teacher.draw(rng, d, noise)
    test_x, test_y = teacher.examples(rng, n_test)
    draw = functools.partial(_client_examples, request.seed, teacher, count, clients)
    return SplitData(
        train_x=np.zeros((0, d), dtype=np.float32),
        train_y=np.zeros(0, dtype=np.float32),
        test_x=test_x,
        test_y=test_y,
        num_classes=1,
        task="regression",
        source=ClientSource(sizes=np.diff(iid_offsets(count, clients)), draw=draw, partitioners=("iid",)),
    )


@dataclass(frozen=True, eq=False)
class Teacher:
    """The generating network: ``signal(x) = Σ_k a_k tanh(w_kᵀx/√d + b_k) + x_1/2``, ``y = signal(x) + noise·ε``.
    ``moments``: the target's exact mean and standard deviation under x ~ N(0, I_d), ε ~ N(0, 1)
    (``target_moments``, a quadrature: computed when first asked, by ``examples`` only, never for ``population``)."""

    w: np.ndarray
    b: np.ndarray
    a: np.ndarray
    noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator, d: int, noise: float) -> Teacher:
        """The teacher's weights from ``rng``: w, then b, then a (the run's stream's first draws)."""
        w = rng.standard_normal((_TEACHER_UNITS, d))
        b = rng.standard_normal(_TEACHER_UNITS)
        a = rng.standard_normal(_TEACHER_UNITS)
        return cls(w, b, a, noise)

    @functools.cached_property
    def moments(self) -> tuple[float, float]:
        return target_moments(self.w, self.b, self.a, self.noise)

    def signal(self, x: np.ndarray) -> np.ndarray:
        """The target of ``x`` before noise."""
        return np.tanh(x @ self.w.T / np.sqrt(x.shape[1]) + self.b) @ self.a + 0.5 * x[:, 0]

    def examples(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` examples from ``rng``, standardised with the distribution's moments: x as drawn (mean 0, deviation
        1), y as ``(y − mean) / std``; float32. Row i is the stream's (d + 1)·i-th to (d + 1)·(i + 1)-th normals
        (its features, then its target's noise), so the first k examples are the same whatever ``n`` >= k. Made
        ``_CHUNK_ROWS`` rows at a time (a large test set costs its float32 result, not its float64 work)."""
        d = self.w.shape[1]
        mean, std = self.moments
        x_out = np.empty((n, d), dtype=np.float32)
        y_out = np.empty(n, dtype=np.float32)
        for start in range(0, n, _CHUNK_ROWS):
            rows = min(_CHUNK_ROWS, n - start)
            z = rng.standard_normal((rows, d + 1))
            x = z[:, :d]
            y = self.signal(x) + self.noise * z[:, d]
            x_out[start : start + rows] = x
            y_out[start : start + rows] = (y - mean) / std
        return x_out, y_out


_CHUNK_ROWS = 2**16


def _client_examples(seed: int, teacher: Teacher, count: int, clients: int, cid: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``cid``'s examples under ``draw: client``: its ``iid`` share of the ``count`` training examples,
    drawn from its own stream."""
    div, mod = divmod(count, clients)
    size = div + (1 if cid < mod else 0)
    return teacher.examples(generator(seed, Stream.DATA_CLIENT, cid), size)


# Trapezoidal quadrature against the standard normal density on [-_SPAN, _SPAN]: the integrands are analytic in a
# strip |Im t| < π/(2σ), so the rule's error is about exp(-π²/(σ·h)), below 1e-20 for σ <= 3 at h = 0.05.
_SPAN = 9.0


def target_moments(w: np.ndarray, b: np.ndarray, a: np.ndarray, noise: float) -> tuple[float, float]:
    """The mean and standard deviation of the teacher's target y = Σ_k a_k tanh(z_k) + x_1/2 + noise·ε under
    x ~ N(0, I_d), ε ~ N(0, 1), where z_k = w_kᵀx/√d + b_k.

    The z_k are jointly normal (means b_k, covariances w_jᵀw_k/d), so E[y] = Σ a_k E tanh z_k (one-dimensional
    integrals), E[y²] = Σ_jk a_j a_k E[tanh z_j tanh z_k] (two-dimensional) + Σ_k a_k E[x_1 tanh z_k] + 1/4 +
    noise², and E[x_1 tanh z_k] = (w_k1/√d) E[1 − tanh² z_k] (Stein's lemma). Each integral is a trapezoidal
    sum on a grid (step ``h``, finer for steeper units), accurate to far below float32's resolution (the tests
    compare a direct integral over x for d = 1 and 2, and a Monte Carlo estimate). Deterministic: the same
    numbers in every process.
    """
    d = w.shape[1]
    cov = w @ w.T / d
    s = np.sqrt(np.diag(cov))
    h = min(0.05, 0.15 / max(float(s.max()), 1e-12))
    t = np.arange(-_SPAN, _SPAN + h / 2, h)
    p = np.exp(-0.5 * t * t) * h / np.sqrt(2 * np.pi)  # the trapezoid's weights (the ends are ~1e-18)
    z = b[:, None] + s[:, None] * t[None, :]  # [K, M]
    th = np.tanh(z)
    e_tanh = th @ p
    e_x1 = (w[:, 0] / np.sqrt(d)) * ((1 - th * th) @ p)
    k = len(b)
    second = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            rho = cov[i, j] / (s[i] * s[j]) if s[i] > 0 and s[j] > 0 else 0.0
            rho = min(max(rho, -1.0), 1.0)
            # z_j = b_j + s_j (rho t1 + sqrt(1 - rho²) t2), with z_i = b_i + s_i t1
            inner = (
                np.tanh(b[j] + s[j] * rho * t[:, None] + s[j] * np.sqrt(1 - rho * rho) * t[None, :]) @ p
            )  # E[tanh z_j | t1], [M]
            second[i, j] = second[j, i] = (th[i] * inner) @ p
    mean = float(a @ e_tanh)
    second_moment = float(a @ second @ a + a @ e_x1 + 0.25 + noise * noise)
    var = second_moment - mean * mean
    return mean, float(np.sqrt(var)) if var > 0 else 1.0
