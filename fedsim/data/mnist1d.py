"""MNIST-1D, generated locally: a 40-feature 1-D analogue of MNIST that separates model classes at tiny cost.

The PyPI package ``mnist1d`` draws from NumPy's *global* RNG (``np.random.seed``) and by default downloads a
pickle, so the generator is re-implemented here from its published code with an explicit ``np.random.Generator``.
The transformation chain and all defaults match the reference; the draws (hence the exact examples) differ from
the reference pickle, the difficulty does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.argspec import ArgSpec, custom, declares, flag, num
from fedsim.data.base import (
    DATASETS,
    GENERATE,
    TEST_SPLIT,
    TRAIN_LABELS,
    DataRequest,
    SplitData,
    TrainLabels,
    stratified_split,
)
from fedsim.errors import ConfigError

# The ten length-12 digit templates of the reference implementation (mnist1d/data.py, get_templates).
_TEMPLATES = np.asarray(
    [
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ]
)
_EPS = 1e-8  # added to the template so the "is this padding?" mask below never hits the signal


def templates() -> np.ndarray:
    """The whitened templates [10, 12]: zero mean, unit std, starting and ending at 0, divided by 6."""
    x = _TEMPLATES - _TEMPLATES.mean(1, keepdims=True)
    x = x / x.std(1, keepdims=True)
    x = x - x[:, :1]
    return x / 6.0


def _interpolate(x: np.ndarray, n: int) -> np.ndarray:
    """Linear resampling of a 1-D signal to ``n`` points over the same [0, 1] span."""
    return np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, len(x)), x)


def _transform(x: np.ndarray, rng: np.random.Generator, p: dict) -> np.ndarray:
    """One example from one template: pad, dilate, scale, translate, noise, shear, subsample."""
    from scipy.ndimage import gaussian_filter1d  # here, not at the top: scipy costs every run start-up time

    low, high = p["padding"]
    pad = low + int(rng.random() * (high - low + 1))
    x = np.concatenate([x + _EPS, np.zeros(pad)])
    x = _interpolate(x, len(_TEMPLATES[0]) + high)
    x = x * (1 + p["scale_coeff"] * (rng.random() - 0.5))
    k = int(rng.integers(p["max_translation"]))
    x = np.roll(x, k)
    mask = x != 0
    corr = gaussian_filter1d(p["corr_noise_scale"] * rng.standard_normal(x.shape), 2)
    x = np.where(mask, x, corr)
    x = x + p["iid_noise_scale"] * rng.standard_normal(x.shape)
    coeff = p["shear_scale"] * (rng.random() - 0.5)
    x = x - coeff * np.linspace(-0.5, 0.5, len(x))
    return _interpolate(x, p["final_seq_length"])


def generate(*, num_samples: int, rng: np.random.Generator, **params) -> tuple[np.ndarray, np.ndarray]:
    """``num_samples // 10`` examples of each digit, shuffled, standardised to mean 0 and std 1 overall."""
    per_class = num_samples // 10
    base = templates()
    xs = np.stack([_transform(base[label], rng, params) for label in range(10) for _ in range(per_class)])
    ys = np.repeat(np.arange(10, dtype=np.int64), per_class)
    order = rng.permutation(len(ys))
    xs, ys = xs[order], ys[order]
    if params["shuffle_seq"]:  # the reference's control for spatial inductive bias
        xs = xs[:, rng.permutation(xs.shape[1])]
    xs = (xs - xs.mean()) / xs.std()
    return xs.astype(np.float32), ys


def _check_padding(field: str, value: Any) -> list[int]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] <= value[1]
    )
    if not ok:
        raise ConfigError(field, "a pair [low, high] of integers with 0 <= low <= high", value)
    return [int(v) for v in value]


@DATASETS.register("mnist1d")
@declares(
    ArgSpec(
        (
            num("num_samples", 5000, integer=True, low=20),
            custom(
                "padding", [36, 60], _check_padding, "a pair [low, high] of integers with 0 <= low <= high"
            ),
            num("scale_coeff", 0.4, low=0, high=2, high_open=True),
            num("max_translation", 48, integer=True, low=1),
            num("corr_noise_scale", 0.25, low=0),
            num("iid_noise_scale", 2e-2, low=0),
            num("shear_scale", 0.75, low=0),
            flag("shuffle_seq", False),
            num("final_seq_length", 40, integer=True, low=2),
        )
    ),
    task="classification",
)
def mnist1d(request: DataRequest) -> SplitData:
    """MNIST-1D: 10 classes, input_shape (40,), 5000 examples by default (4000 + 1000 at test_fraction 0.2).

    ``data.args`` (reference defaults): ``num_samples`` (5000), ``padding`` ([36, 60]), ``scale_coeff`` (0.4),
    ``max_translation`` (48), ``corr_noise_scale`` (0.25), ``iid_noise_scale`` (0.02), ``shear_scale`` (0.75),
    ``shuffle_seq`` (false), ``final_seq_length`` (40). The central test set is a seeded stratified split.

    References:
        Greydanus, S. and Kobak, D., "Scaling down Deep Learning with MNIST-1D", ICML 2024, arXiv:2011.14439
        (2020); generator followed: github.com/greydanus/mnist1d, mnist1d/data.py and mnist1d/transform.py.
    """
    params = {k: v for k, v in request.args.items() if k != "num_samples"}
    params["padding"] = tuple(params["padding"])
    num_samples = request.args["num_samples"]
    x, y = generate(num_samples=num_samples, rng=request.rng(GENERATE), **params)
    train, test = stratified_split(y, request.test_fraction, request.rng(TEST_SPLIT))
    return SplitData(train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test], num_classes=10)


@TRAIN_LABELS.register("mnist1d")
def mnist1d_train_count(request: DataRequest) -> TrainLabels:
    """The number of training examples: ``num_samples // 10`` of each digit, less the stratified test split.

    The labels' order is a permutation drawn after every example's features, so they are not drawn here.
    """
    labels = np.repeat(np.arange(10, dtype=np.int64), request.args["num_samples"] // 10)
    # the split's size depends on the counts per class only, not on the order or the draws
    train, _ = stratified_split(labels, request.test_fraction, request.rng(TEST_SPLIT))
    return TrainLabels(count=len(train), labels=None, users=None)
