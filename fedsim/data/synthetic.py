"""LEAF/FedProx Synthetic(alpha, beta): generated per-user logistic-regression data of tunable heterogeneity.

Each of ``num_clients`` users gets its own local model and its own feature distribution. The user id is kept, so
the ``natural`` partitioner gives every user exactly its own data, while ``iid``/``dirichlet``/... repartition the
pooled examples.

Note (true of the reference generator too): ``alpha`` shifts every entry of W_k and b_k by the same u_k, which
adds u_k * (sum(x) + 1) to *every* class logit, so the argmax labels do not depend on alpha. Local models differ
through their independent N(0, 1) draws whatever alpha is; ``beta`` spreads the users' feature means.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsim.argspec import ArgSpec, choice, custom, declares, flag, num
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

# FedProx's generator adds 50 to the log-normal draw so that no user is (nearly) empty.
DEFAULT_MIN_SAMPLES = 50
# Guard against a typo such as mean: 40 asking for e^40 examples (the population's total under draw: population,
# one user's under draw: client, which never holds the population).
MAX_TOTAL_SAMPLES = 10**8
TEST_USERS = 1000
"""Under ``draw: client``, the central test set is the held-out examples of the first ``TEST_USERS`` users."""


def check_samples(field: str, value: Any) -> dict[str, Any]:
    """``data.args.samples`` resolved: ``{dist: lognormal, mean, sigma, min, max}`` or ``{dist: constant, value}``."""
    if not isinstance(value, Mapping):
        raise ConfigError(field, "a mapping {dist: lognormal|constant, ...}", value)
    dist = value.get("dist", "lognormal")
    rest = {k: v for k, v in value.items() if k != "dist"}
    if dist == "constant":
        out = _CONSTANT_SAMPLES.resolve(rest, field=field, owner="samples {dist: constant}")
    elif dist == "lognormal":
        out = _LOGNORMAL_SAMPLES.resolve(rest, field=field, owner="samples {dist: lognormal}")
    else:
        raise ConfigError(f"{field}.dist", "one of lognormal, constant", dist)
    return {"dist": dist, **out}


def _max_at_least_min(field: str, args: dict[str, Any]) -> None:
    if args["max"] is not None and args["max"] < args["min"]:
        raise ConfigError(f"{field}.max", f"an integer >= min ({args['min']})", args["max"])


_CONSTANT_SAMPLES = ArgSpec((num("value", integer=True, low=2),))
_LOGNORMAL_SAMPLES = ArgSpec(
    (
        num("mean", 4.0),
        num("sigma", 2.0, low=0),
        num("min", DEFAULT_MIN_SAMPLES, integer=True, low=2),
        num("max", None, integer=True, low=2, default_doc="null (no cap)"),
    ),
    cross=_max_at_least_min,
)
DEFAULT_SAMPLES = {"dist": "lognormal", **_LOGNORMAL_SAMPLES.defaults()}


@DATASETS.register("synthetic")
@declares(
    ArgSpec(
        (
            num("alpha", 1.0, low=0),
            num("beta", 1.0, low=0),
            num("dim", 60, integer=True, low=1),
            num("classes", 10, integer=True, low=2),
            flag("iid", False),
            custom(
                "samples",
                DEFAULT_SAMPLES,
                check_samples,
                "{dist: lognormal, mean, sigma, min, max} or {dist: constant, value}",
            ),
            choice("draw", "population", DRAWS),
        )
    ),
    task="classification",
)
def synthetic(request: DataRequest) -> SplitData:
    """Synthetic(alpha, beta) with one user per client.

    For user k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k ~ N(u_k, 1) of shape [dim, classes], b_k ~ N(u_k, 1);
    v_k ~ N(B_k, 1) per feature; x ~ N(v_k, Sigma) with Sigma diagonal, Sigma_jj = j^-1.2 (j from 1);
    y = argmax softmax(x W_k + b_k) (= argmax of the logits). With ``iid: true`` (FedProx's Synthetic-IID) all
    users share one W, b ~ N(0, 1) and the feature mean 0; alpha and beta are then unused. The number of examples of user k is
    ``int(lognormal(mean, sigma)) + min`` (optionally capped at ``max``), or a constant. The last
    ``round(test_fraction * n_k)`` examples of each user (at most n_k - 1) form the central test set, so the test
    set follows the population mixture.

    ``data.args``: ``alpha`` (1.0), ``beta`` (1.0), ``dim`` (60), ``classes`` (10), ``iid`` (false),
    ``samples`` ({dist: lognormal, mean: 4.0, sigma: 2.0, min: 50, max: null} or {dist: constant, value: n}),
    ``draw`` (``population``).

    ``draw: client``: the example counts are the same draws as under ``population`` (so are the clients' sizes),
    and with ``iid`` so are the shared W, b; user k's u_k, B_k, W_k, b_k, v_k and examples come from its own
    stream, keyed by the seed and k (``Stream.DATA_CLIENT``; its training and held-out examples from two streams
    spawned from it), drawn when a round asks for them: the same distribution, other numbers. The central test set is the held-out examples of the first ``TEST_USERS``
    (1000) users (a sample of the same mixture, since users are i.i.d.). It needs ``partitioner: natural``.

    References:
        Li, T., Sahu, A. K., Zaheer, M., Sanjabi, M., Talwalkar, A. and Smith, V., "Federated Optimization in
        Heterogeneous Networks" (FedProx), MLSys 2020, arXiv:1812.06127, Sec. 5.1; generator followed:
        github.com/litian96/FedProx, data/synthetic_1_1/generate_synthetic.py (log-normal(4, 2) + 50 counts)
        and data/synthetic_iid/generate_iid.py.
        Caldas, S. et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, 2018.
    """
    args = request.args
    alpha, beta, dim, classes, iid = (args[k] for k in ("alpha", "beta", "dim", "classes", "iid"))
    users = request.num_clients
    rng = request.rng(GENERATE)
    if args["draw"] == "client":
        return _client_drawn(request, rng)
    counts = sample_counts(args["samples"], users, rng)

    u = rng.normal(0.0, alpha, users)
    big_b = rng.normal(0.0, beta, users)
    sigma_sqrt = np.arange(1, dim + 1, dtype=np.float64) ** (-1.2 / 2)  # std devs of the diagonal Sigma
    if iid:
        means = np.zeros((users, dim))
        w_shared = rng.normal(0.0, 1.0, (dim, classes))
        b_shared = rng.normal(0.0, 1.0, classes)
    else:
        means = rng.normal(big_b[:, None], 1.0, (users, dim))

    train_x, train_y, train_u, test_x, test_y = [], [], [], [], []
    for k in range(users):
        if iid:
            w, b = w_shared, b_shared
        else:
            w = rng.normal(u[k], 1.0, (dim, classes))
            b = rng.normal(u[k], 1.0, classes)
        n = int(counts[k])
        x = means[k] + rng.standard_normal((n, dim)) * sigma_sqrt
        y = np.argmax(x @ w + b, axis=1)
        n_train = _train_count(n, request.test_fraction)
        train_x.append(x[:n_train])
        train_y.append(y[:n_train])
        train_u.append(np.full(n_train, k, dtype=np.int64))
        test_x.append(x[n_train:])
        test_y.append(y[n_train:])
    return SplitData(
        train_x=np.concatenate(train_x).astype(np.float32),
        train_y=np.concatenate(train_y).astype(np.int64),
        test_x=np.concatenate(test_x).astype(np.float32).reshape(-1, dim),
        test_y=np.concatenate(test_y).astype(np.int64),
        num_classes=classes,
        train_users=np.concatenate(train_u),
    )


def _train_count(n: int, test_fraction: float) -> int:
    """A user's training examples: all but its last ``round(test_fraction · n)`` (at least one kept)."""
    return n - min(int(round(test_fraction * n)), n - 1)


def _train_counts(counts: np.ndarray, test_fraction: float) -> np.ndarray:
    """``_train_count`` of every user, vectorised (``np.round`` rounds half to even, as ``round``)."""
    held = np.minimum(np.round(test_fraction * counts.astype(np.float64)).astype(np.int64), counts - 1)
    return (counts - held).astype(np.int64)


def _client_drawn(request: DataRequest, rng: np.random.Generator) -> SplitData:
    """``draw: client``: the counts (and with ``iid`` the shared model) from ``rng``, each user's own draws on
    demand; the test set from the first ``TEST_USERS`` users."""
    args = request.args
    users = request.num_clients
    counts = sample_counts(args["samples"], users, rng, per_user_limit=True)
    shared = None
    if args["iid"]:
        shared = (rng.normal(0.0, 1.0, (args["dim"], args["classes"])), rng.normal(0.0, 1.0, args["classes"]))
    sizes = _train_counts(counts, request.test_fraction)
    user = functools.partial(
        _user_examples,
        request.seed,
        counts,
        sizes,
        float(args["alpha"]),
        float(args["beta"]),
        int(args["dim"]),
        int(args["classes"]),
        shared,
    )
    test = [user(k, held_out=True) for k in range(min(users, TEST_USERS))]
    return SplitData(
        train_x=np.zeros((0, args["dim"]), dtype=np.float32),
        train_y=np.zeros(0, dtype=np.int64),
        test_x=np.concatenate([x for x, _ in test]).reshape(-1, args["dim"]),
        test_y=np.concatenate([y for _, y in test]),
        num_classes=args["classes"],
        source=ClientSource(sizes=sizes, draw=user, partitioners=("natural",)),
    )


def _user_examples(
    seed: int,
    counts: np.ndarray,
    sizes: np.ndarray,
    alpha: float,
    beta: float,
    dim: int,
    classes: int,
    shared: tuple[np.ndarray, np.ndarray] | None,
    k: int,
    *,
    held_out: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """User ``k``'s training examples (or, ``held_out``, its held-out ones) under ``draw: client``: its model and
    feature mean from the user's own stream, its ``sizes[k]`` training and ``counts[k] − sizes[k]`` held-out
    examples from two streams spawned from it; float32 x, int64 y."""
    rng = generator(seed, Stream.DATA_CLIENT, k)
    if shared is None:
        u, big_b = rng.normal(0.0, alpha), rng.normal(0.0, beta)
        w, b = u + rng.standard_normal((dim, classes)), u + rng.standard_normal(classes)
        mean = big_b + rng.standard_normal(dim)
    else:
        (w, b), mean = shared, np.zeros(dim)
    # Training and held-out examples from two streams spawned from the user's: either is drawn without the other.
    train_rng, held_rng = rng.spawn(2)
    n = int(counts[k]) - int(sizes[k]) if held_out else int(sizes[k])
    sigma_sqrt = np.arange(1, dim + 1, dtype=np.float64) ** (-1.2 / 2)
    x = mean + (held_rng if held_out else train_rng).standard_normal((n, dim)) * sigma_sqrt
    y = np.argmax(x @ w + b, axis=1).astype(np.int64)
    return x.astype(np.float32), y


@TRAIN_LABELS.register("synthetic")
def synthetic_train_users(request: DataRequest) -> TrainLabels:
    """The user id of every training example, from the example counts alone (the generator's first draws).

    The labels are ``argmax`` of each user's features, so they are not drawn here (``labels`` is ``None``).
    """
    per_client = request.args["draw"] == "client"
    counts = sample_counts(
        request.args["samples"], request.num_clients, request.rng(GENERATE), per_user_limit=per_client
    )
    train = _train_counts(counts, request.test_fraction)
    if per_client:
        return TrainLabels(
            count=int(train.sum()), labels=None, users=None, client_sizes=train, partitioners=("natural",)
        )
    users = np.repeat(np.arange(request.num_clients, dtype=np.int64), train)
    return TrainLabels(count=len(users), labels=None, users=users)


def sample_counts(
    spec: Mapping[str, Any] | None, users: int, rng: np.random.Generator, *, per_user_limit: bool = False
) -> np.ndarray:
    """Examples per user from ``data.args.samples`` (default: FedProx's ``int(lognormal(4, 2)) + 50``).

    The total is bounded by ``MAX_TOTAL_SAMPLES``, or with ``per_user_limit`` (``draw: client``) each user's
    count."""
    field = "data.args.samples"
    spec = check_samples(field, DEFAULT_SAMPLES if spec is None else spec)
    if spec["dist"] == "constant":
        return np.full(users, spec["value"], dtype=np.int64)
    mean, sigma, low, high = spec["mean"], spec["sigma"], spec["min"], spec["max"]
    draws = rng.lognormal(mean, sigma, users)
    if high is not None:
        draws = np.minimum(draws, high)
    if (draws.max(initial=0) if per_user_limit else draws.sum()) > MAX_TOTAL_SAMPLES:
        raise ConfigError(
            field, f"a distribution giving at most {MAX_TOTAL_SAMPLES:.0e} examples in all", dict(spec)
        )
    counts = draws.astype(np.int64) + low
    return counts if high is None else np.minimum(counts, high)
