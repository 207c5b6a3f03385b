"""FedAvg and the FedOpt family: hand-computed aggregation cases, client sampling, and the equal-weight law."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ConfigError
from strategies import STRATEGIES, ReducedUpdates
from strategies.fedavg import FedAvg, sample_clients


def reduced(params, clients):
    """Build the engine's reduction Σ n_i (θ_i − θ) from explicit client models [(θ_i, n_i), ...]."""
    delta = {k: sum(n * (theta[k] - params[k]) for theta, n in clients) for k in params}
    return ReducedUpdates(delta, float(sum(n for _, n in clients)), len(clients))


THETA = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}
# Two clients: θ1 = [3, 2] with 1 example, θ2 = [0, 5] with 3 examples.
CLIENTS = [
    ({"w": torch.tensor([3.0, 2.0], dtype=torch.float64)}, 1),
    ({"w": torch.tensor([0.0, 5.0], dtype=torch.float64)}, 3),
]


def build(name, **opt):
    return STRATEGIES.get(name)(
        clients_per_round=2, args={}, server_optimizer=opt or {"name": "sgd", "lr": 1.0}
    )


def step(strategy):
    state = strategy.init(THETA)
    return strategy.aggregate(state, THETA, reduced(THETA, CLIENTS)).params["w"]


def test_fedavg_is_the_example_weighted_mean():
    # Hand computation: ((3·1 + 0·3)/4, (2·1 + 5·3)/4) = (0.75, 4.25).
    torch.testing.assert_close(step(build("fedavg")), torch.tensor([0.75, 4.25], dtype=torch.float64))


def test_fedadam_first_step_by_hand():
    # Δ = θ − mean = (0.25, −2.25); m = 0.1Δ; v = 0.01Δ²; θ' = θ − η m/(√v + τ), η = 0.1, τ = 1e-3 (no bias
    # correction, Reddi et al. 2021 Alg. 2): (1 − 0.1·0.025/0.026, 2 + 0.1·0.225/0.226).
    expected = torch.tensor([1 - 0.1 * 0.025 / 0.026, 2 + 0.1 * 0.225 / 0.226], dtype=torch.float64)
    torch.testing.assert_close(step(build("fedadam")), expected)


def test_fedyogi_first_step_by_hand():
    # Yogi from v = 0: v = 0 − 0.01Δ²·sign(0 − Δ²) = 0.01Δ², so the first step equals Adam's with η = 0.01.
    expected = torch.tensor([1 - 0.01 * 0.025 / 0.026, 2 + 0.01 * 0.225 / 0.226], dtype=torch.float64)
    torch.testing.assert_close(step(build("fedyogi")), expected)


def test_fedavgm_second_step_uses_momentum():
    # SGD momentum 0.9, lr 1: step 1 = −Δ → mean; step 2 with the same clients relative to the new θ.
    s = build("fedavgm")
    st0 = s.init(THETA)
    r1 = s.aggregate(st0, THETA, reduced(THETA, CLIENTS))
    d1 = THETA["w"] - torch.tensor([0.75, 4.25], dtype=torch.float64)
    clients2 = [({"w": r1.params["w"] + 1.0}, 1)]  # one client moved every weight by +1 → Δ2 = −1
    r2 = s.aggregate(r1.state, r1.params, reduced(r1.params, clients2))
    buf = 0.9 * d1 + (-1.0)
    torch.testing.assert_close(r2.params["w"], r1.params["w"] - buf)


def test_no_client_leaves_the_model_unchanged():
    s = build("fedadam")
    st0 = s.init(THETA)
    out = s.aggregate(st0, THETA, ReducedUpdates({"w": torch.zeros(2, dtype=torch.float64)}, 0.0, 0))
    torch.testing.assert_close(out.params["w"], THETA["w"])
    assert out.state == st0


def test_strategy_args_are_rejected_for_fedavg():
    with pytest.raises(ConfigError, match="strategy.args.mu"):
        STRATEGIES.get("fedavg")(
            clients_per_round=2, args={"mu": 1}, server_optimizer={"name": "sgd", "lr": 1.0}
        )


def test_sampling_is_uniform_distinct_sorted_and_seeded():
    avail = list(range(0, 200, 2))
    a = sample_clients(avail, 10, np.random.default_rng(3))
    assert a == sample_clients(avail, 10, np.random.default_rng(3))
    assert len(set(a)) == 10 and list(a) == sorted(a) and set(a) <= set(avail)
    assert sample_clients(avail[:4], 10, np.random.default_rng(0)) == tuple(avail[:4])
    counts = np.zeros(200)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        counts[list(sample_clients(avail, 10, rng))] += 1
    picked = counts[avail]
    # Each of 100 clients is chosen with p = 0.1 per draw: 200 expected, binomial sd ≈ 13.4.
    assert picked.min() > 140 and picked.max() < 260


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=3, max_size=3),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 50),
)
def test_equal_weights_fedavg_equals_plain_mean(models, n):
    theta = {"w": torch.zeros(3, dtype=torch.float64)}
    clients = [({"w": torch.tensor(m, dtype=torch.float64)}, n) for m in models]
    s = FedAvg(clients_per_round=len(models), server_optimizer={"name": "sgd", "lr": 1.0})
    out = s.aggregate(s.init(theta), theta, reduced(theta, clients)).params["w"]
    plain = torch.tensor(models, dtype=torch.float64).mean(0)
    torch.testing.assert_close(out, plain, rtol=1e-9, atol=1e-9)
