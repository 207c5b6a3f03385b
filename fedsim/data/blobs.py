"""Gaussian class blobs of any example shape: cheap, scalable data for benchmarks and scale tests.

Generated in float32 straight into the final tensor (no float64 copy, no per-client arrays), so a population of
10^6 clients or a batch of CIFAR-shaped examples costs only the examples themselves. The difficulty is set by one
number, ``noise``, and is known in closed form, which makes the data a yardstick for speed, not for learning.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedsim.argspec import ArgSpec, choice, declares, integers, num
from fedsim.data.base import (
    DATASETS,
    DRAWS,
    GENERATE,
    TRAIN_LABELS,
    ClientSource,
    DataRequest,
    SplitData,
    TrainLabels,
)
from fedsim.errors import ConfigError
from fedsim.randomness import Stream, generator

if TYPE_CHECKING:  # imported where the examples are drawn: validating a scenario needs none (fedsim.data)
    import torch

# Guard against a typo asking for terabytes: 4e9 float32 values are 16 GB.
MAX_VALUES = 4 * 10**9
# Values of centers[y] gathered per step into one reused buffer (~16 MB of float32).
_CHUNK_VALUES = 2**22


@DATASETS.register("blobs")
@declares(
    ArgSpec(
        (
            integers("shape", [784], low=1),
            num("classes", 10, integer=True, low=2),
            num("samples_per_client", 32, integer=True, low=1),
            num("test_samples", 1000, integer=True, low=1),
            num("noise", 1.0, low=0, low_open=True),
            choice("draw", "population", DRAWS),
        )
    ),
    task="classification",
)
def blobs(request: DataRequest) -> SplitData:
    """Labels y uniform over ``classes``; x = center[y] + noise * N(0, I), centers ~ N(0, I) of the example shape.

    There are ``samples_per_client * population.clients`` training examples, so ``iid`` gives every client
    exactly ``samples_per_client``; the central test set (``test_samples`` examples from the same mixture, drawn
    before the training set so it does not depend on the population) replaces ``test_fraction``. Two centers lie
    about sqrt(2 * D) apart in D dimensions, so with the defaults (D = 784, noise 1) nearest-center
    classification is nearly perfect; raise ``noise`` (or lower D) to make the task harder.

    ``data.args``: ``shape`` ([784]), ``classes`` (10), ``samples_per_client`` (32), ``test_samples`` (1000),
    ``noise`` (1.0), ``draw`` (``population``). With ``draw: client`` the centers and the test set are the same
    draws, but client c's ``samples_per_client`` examples (labels, then noise) come from its own stream, keyed by
    the seed and c (``Stream.DATA_CLIENT``), made when a round asks for them: the same mixture, other numbers
    than ``population``'s, and no cost per client until drawn. It needs ``partitioner: iid``.

    References:
        Pedregosa, F. et al., "Scikit-learn: Machine Learning in Python", JMLR 12, 2011 (``make_blobs``, the
        same isotropic Gaussian mixture).
    """
    settings = _settings(request)
    if settings.draw == "client":
        _, centers, (test_x, test_y) = _centers_and_test(request, settings)
        sizes = np.full(request.num_clients, settings.per_client, dtype=np.int64)
        draw = functools.partial(
            _client_examples,
            request.seed,
            centers.numpy(),
            settings.classes,
            settings.per_client,
            settings.noise,
        )
        return SplitData(
            train_x=np.zeros((0, *settings.shape), dtype=np.float32),
            train_y=np.zeros(0, dtype=np.int64),
            test_x=test_x.numpy(),
            test_y=test_y.numpy(),
            num_classes=settings.classes,
            source=ClientSource(sizes=sizes, draw=draw, partitioners=("iid",)),
        )
    gen, centers, (test_x, test_y), train_y = _labels(request, settings)
    train_x = _features(train_y, centers, settings.noise, gen)
    return SplitData(
        train_x=train_x.numpy(),
        train_y=train_y.numpy(),
        test_x=test_x.numpy(),
        test_y=test_y.numpy(),
        num_classes=settings.classes,
    )


@TRAIN_LABELS.register("blobs")
def blobs_train_labels(request: DataRequest) -> TrainLabels:
    """The training labels without the training features: the same draws as ``blobs`` up to ``train_y``
    (the centers and the test set, which come first, are drawn; the training examples are not)."""
    settings = _settings(request)
    if settings.draw == "client":
        count = settings.per_client * request.num_clients
        sizes = np.full(request.num_clients, settings.per_client, dtype=np.int64)
        return TrainLabels(count=count, labels=None, users=None, client_sizes=sizes, partitioners=("iid",))
    *_, train_y = _labels(request, settings)
    return TrainLabels(count=len(train_y), labels=train_y.numpy(), users=None)


def _client_examples(
    seed: int, centers: np.ndarray, classes: int, n: int, noise: float, cid: int
) -> tuple[np.ndarray, np.ndarray]:
    """Client ``cid``'s examples under ``draw: client``: n labels uniform over the classes, then
    ``center[y] + noise · N(0, I)`` in float32, from the client's own stream."""
    rng = generator(seed, Stream.DATA_CLIENT, cid)
    y = rng.integers(classes, size=n, dtype=np.int64)
    x = rng.standard_normal((n, *centers.shape[1:]), dtype=np.float32)
    x *= np.float32(noise)
    x += centers[y]
    return x, y


@dataclass(frozen=True)
class _Settings:
    shape: tuple[int, ...]
    classes: int
    per_client: int
    test_samples: int
    noise: float
    draw: str


def _settings(request: DataRequest) -> _Settings:
    """``data.args`` as typed settings, and the size guard."""
    args = request.args  # resolved against the declared spec (defaults filled in) by data_request
    shape = tuple(args["shape"])
    classes, per_client, test_samples = args["classes"], args["samples_per_client"], args["test_samples"]
    noise = float(args["noise"])
    # draw: client materialises one client at a time, never the population
    num_train = per_client * (1 if args["draw"] == "client" else request.num_clients)
    values = (num_train + test_samples + classes) * math.prod(shape)
    if values > MAX_VALUES:
        raise ConfigError(
            "data.args",
            f"settings giving at most {MAX_VALUES:.0e} float32 values in all ({num_train} training examples of "
            f"shape {list(shape)} asked for)",
            dict(request.args),
        )
    return _Settings(tuple(shape), classes, per_client, test_samples, noise, args["draw"])


def _labels(
    request: DataRequest, s: _Settings
) -> tuple[torch.Generator, torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The draws up to the training labels: generator, centers, the test set (x, y), the training labels."""
    gen, centers, test = _centers_and_test(request, s)
    train_y = _draw_labels(s.per_client * request.num_clients, s.classes, gen)
    return gen, centers, test, train_y


def _centers_and_test(
    request: DataRequest, s: _Settings
) -> tuple[torch.Generator, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The first draws, the same under either ``draw``: generator, centers, the test set (x, y)."""
    import torch

    gen = torch.Generator().manual_seed(int(request.rng(GENERATE).integers(2**63)))
    centers = torch.randn((s.classes, *s.shape), generator=gen, dtype=torch.float32)
    test_y = _draw_labels(s.test_samples, s.classes, gen)
    test_x = _features(test_y, centers, s.noise, gen)
    return gen, centers, (test_x, test_y)


def _draw_labels(n: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` labels uniform over the classes (drawn before the examples' noise)."""
    import torch

    return torch.randint(classes, (n,), generator=gen, dtype=torch.int64)


def _features(y: torch.Tensor, centers: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """The examples of labels ``y``: ``center[y] + noise · N(0, I)``, built in place in one float32 tensor."""
    import torch

    n = len(y)
    x = torch.randn((n, *centers.shape[1:]), generator=gen, dtype=torch.float32).mul_(noise)
    rows = max(1, _CHUNK_VALUES // centers[0].numel())
    # One reused buffer for centers[y]: a fresh gather per chunk leaves the heap ~4 chunks larger.
    buffer = torch.empty((min(rows, n), *centers.shape[1:]), dtype=torch.float32)
    for start in range(0, n, rows):
        labels = y[start : start + rows]
        gathered = buffer[: len(labels)]
        torch.index_select(centers, 0, labels, out=gathered)
        x[start : start + rows].add_(gathered)
    return x
