"""Server optimizers: the registry's validation, and Flower's FedAvgM / FedAdam / FedYogi as the numerical oracle.

How Flower is driven: its public ``aggregate_train(server_round, replies)`` is called with crafted reply
``Message``s (one ArrayRecord of client parameters and a MetricRecord ``{"num-examples": 1}`` each, so Flower's
weighted mean is the plain mean). The current global arrays are set on ``strategy.current_arrays`` exactly as
``configure_train`` would set them: every round for FedAdam/FedYogi (Flower's own previous output), once for
FedAvgM (which then carries them itself). Flower runs its own trajectory; the two only share the client parameters
of each round. Everything is float64 (Flower computes in numpy float64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi

from fedsim.errors import ConfigError, UnknownNameError
from fedsim.gradcore import apply_updates
from strategies.server_optimizers import SERVER_OPTIMIZERS, build_server_optimizer, server_optimizer_names

ROUNDS, CLIENTS = 3, 3
ATOL = 1e-6


# ---------------------------------------------------------------- helpers


def _initial_params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "b": torch.randn(4, generator=g, dtype=torch.float64),
    }


def _client_params(theta: dict[str, torch.Tensor], rnd: int) -> list[dict[str, torch.Tensor]]:
    """Clients' models near theta; the spread changes per round so Yogi's sign(v - delta^2) takes both signs."""
    g = torch.Generator().manual_seed(100 + rnd)
    spread = [1.0, 0.1, 3.0][rnd % 3]
    return [
        {k: v + spread * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
        for _ in range(CLIENTS)
    ]


def _reply(params: dict[str, torch.Tensor], node: int) -> Message:
    metadata = Metadata(
        run_id=0,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="instruction",
        group_id="train",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v.numpy().copy()) for k, v in params.items()}),
            "metrics": MetricRecord({"num-examples": 1}),
        }
    )
    return Message(content=content, metadata=metadata)


def _ours_step(opt, state, theta, clients):
    """One FedOpt round: pseudo-gradient delta = theta - mean(clients), then the optimizer step."""
    mean = {k: torch.stack([c[k] for c in clients]).mean(0) for k in theta}
    delta = {k: theta[k] - mean[k] for k in theta}
    updates, state = opt.update(delta, state, theta)
    return apply_updates(theta, updates), state


def _to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _assert_close(ours: dict[str, torch.Tensor], flower: dict[str, np.ndarray]) -> None:
    assert list(ours) == list(flower)
    for k in ours:
        np.testing.assert_allclose(ours[k].numpy(), flower[k], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- Flower oracle


@pytest.mark.parametrize(("lr", "momentum"), [(1.0, 0.0), (0.5, 0.0), (1.0, 0.9), (0.7, 0.5)])
def test_sgd_matches_flower_fedavgm(lr, momentum):
    opt = build_server_optimizer({"name": "sgd", "lr": lr, "momentum": momentum})
    flower = FedAvgM(server_learning_rate=lr, server_momentum=momentum)
    theta = _initial_params()
    flower.current_arrays = ArrayRecord({k: Array(v.numpy().copy()) for k, v in theta.items()})
    state = opt.init(theta)
    for rnd in range(1, ROUNDS + 1):
        clients = _client_params(theta, rnd)
        theta, state = _ours_step(opt, state, theta, clients)
        flower_arrays, _ = flower.aggregate_train(rnd, [_reply(c, i) for i, c in enumerate(clients)])
        _assert_close(theta, _to_numpy(flower_arrays))


def test_adam_matches_flower_fedadam_with_its_step_size_bias_correction_undone():
    """Our ``adam`` is the paper's FedAdam (no bias correction). Flower 1.41's FedAdam multiplies its step by
    sqrt(1 - beta2^(r+1)) / (1 - beta1^(r+1)) in round r (exponent r + 1), which the paper does not; so Flower's
    ``eta`` is set each round to ``lr`` divided by that factor, making its effective step exactly ``lr``. The moment
    updates themselves are uncorrected in both, so everything else is compared as is."""
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = build_server_optimizer({"name": "adam", "lr": lr, "beta1": b1, "beta2": b2, "tau": tau})
    flower = FedAdam(eta=lr, beta_1=b1, beta_2=b2, tau=tau)
    theta = _initial_params()
    flower_theta = {k: v.numpy().copy() for k, v in theta.items()}
    state = opt.init(theta)
    for rnd in range(1, ROUNDS + 1):
        clients = _client_params(theta, rnd)
        theta, state = _ours_step(opt, state, theta, clients)
        flower.eta = lr / (math.sqrt(1 - b2 ** (rnd + 1)) / (1 - b1 ** (rnd + 1)))
        flower.current_arrays = flower_theta
        flower_arrays, _ = flower.aggregate_train(rnd, [_reply(c, i) for i, c in enumerate(clients)])
        flower_theta = _to_numpy(flower_arrays)
        _assert_close(theta, flower_theta)
    adam_state = state.inner[0]
    for k in theta:  # Flower keeps m and v of (mean - theta) = -delta: m flips sign, v does not
        np.testing.assert_allclose(-adam_state.mu[k].numpy(), flower.m_t[k], atol=ATOL, rtol=0)
        np.testing.assert_allclose(adam_state.nu[k].numpy(), flower.v_t[k], atol=ATOL, rtol=0)


def test_yogi_matches_flower_fedyogi():
    lr, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    opt = build_server_optimizer({"name": "yogi", "lr": lr, "beta1": b1, "beta2": b2, "tau": tau})
    flower = FedYogi(eta=lr, beta_1=b1, beta_2=b2, tau=tau)
    theta = _initial_params()
    flower_theta = {k: v.numpy().copy() for k, v in theta.items()}
    state = opt.init(theta)
    signs = set()
    for rnd in range(1, ROUNDS + 1):
        clients = _client_params(theta, rnd)
        v_before = state.inner[0].nu
        theta_before = theta
        theta, state = _ours_step(opt, state, theta, clients)
        delta_sq = {k: (theta_before[k] - torch.stack([c[k] for c in clients]).mean(0)) ** 2 for k in theta}
        signs |= {int(s) for k in theta for s in torch.sign(v_before[k] - delta_sq[k]).unique()}
        flower.current_arrays = flower_theta
        flower_arrays, _ = flower.aggregate_train(rnd, [_reply(c, i) for i, c in enumerate(clients)])
        flower_theta = _to_numpy(flower_arrays)
        _assert_close(theta, flower_theta)
    assert {-1, 1} <= signs  # both branches of Yogi's v update were exercised


def test_fedavg_is_the_plain_mean():
    """sgd with lr 1 and no momentum (the default) moves theta to the clients' mean (FedAvg, equal weights)."""
    opt = build_server_optimizer({"name": "sgd"})
    theta = _initial_params()
    clients = _client_params(theta, 1)
    new, _ = _ours_step(opt, opt.init(theta), theta, clients)
    for k in theta:
        torch.testing.assert_close(new[k], torch.stack([c[k] for c in clients]).mean(0), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", server_optimizer_names())
def test_every_server_optimizer_converges_on_a_quadratic(name):
    """Clients all return the optimum 1: repeated server steps approach it (each optimizer's default settings)."""
    opt = build_server_optimizer({"name": name})
    theta = {"x": torch.zeros(4, dtype=torch.float64)}
    state = opt.init(theta)
    for _ in range(300):
        theta, state = _ours_step(opt, state, theta, [{"x": torch.ones(4, dtype=torch.float64)}])
    assert float((theta["x"] - 1).abs().max()) < 0.1


# ---------------------------------------------------------------- registry and validation


def test_names_and_aliases():
    assert server_optimizer_names() == ["adam", "fedadam", "fedavgm", "fedyogi", "sgd", "yogi"]
    assert SERVER_OPTIMIZERS.get("fedadam") is SERVER_OPTIMIZERS.get("adam")
    assert SERVER_OPTIMIZERS.get("fedyogi") is SERVER_OPTIMIZERS.get("yogi")


def test_fedavgm_defaults_to_momentum_0_9():
    # hand: constant delta 1 with momentum 0.9, lr 1 -> buf 1, then 1.9 -> theta -1, then -2.9
    opt = build_server_optimizer({"name": "fedavgm"})
    theta = {"x": torch.zeros(1, dtype=torch.float64)}
    state = opt.init(theta)
    for expected in (-1.0, -2.9):
        updates, state = opt.update({"x": torch.ones(1, dtype=torch.float64)}, state, theta)
        theta = apply_updates(theta, updates)
        assert float(theta["x"]) == pytest.approx(expected, abs=1e-12)


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        build_server_optimizer({"name": "adagrad"})
    assert info.value.field == "strategy.server_optimizer.name"
    assert "adam" in str(info.value) and "yogi" in str(info.value)


def test_missing_name():
    with pytest.raises(ConfigError, match=r"strategy\.server_optimizer\.name must be given"):
        build_server_optimizer({"lr": 1.0})


def test_unknown_argument_names_the_field_and_the_accepted_ones():
    with pytest.raises(ConfigError) as info:
        build_server_optimizer({"name": "adam", "lr": 0.1, "betas": [0.9, 0.99]})
    assert info.value.field == "strategy.server_optimizer.betas"
    assert "lr, beta1, beta2, tau" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"name": "sgd", "lr": 0.0}, "lr"),
        ({"name": "sgd", "lr": -1.0}, "lr"),
        ({"name": "sgd", "lr": "fast"}, "lr"),
        ({"name": "sgd", "lr": True}, "lr"),
        ({"name": "sgd", "lr": float("nan")}, "lr"),
        ({"name": "sgd", "momentum": 1.0}, "momentum"),
        ({"name": "sgd", "momentum": -0.1}, "momentum"),
        ({"name": "sgd", "nesterov": "yes", "momentum": 0.9}, "nesterov"),
        ({"name": "sgd", "nesterov": True}, "nesterov"),
        ({"name": "fedavgm", "momentum": 1.5}, "momentum"),
        ({"name": "adam", "beta1": 1.0}, "beta1"),
        ({"name": "adam", "beta2": -0.5}, "beta2"),
        ({"name": "adam", "tau": 0.0}, "tau"),
        ({"name": "yogi", "lr": -0.01}, "lr"),
        ({"name": "yogi", "tau": -1e-3}, "tau"),
    ],
)
def test_bad_values_are_config_errors(spec, field):
    with pytest.raises(ConfigError) as info:
        build_server_optimizer(spec)
    assert info.value.field == f"strategy.server_optimizer.{field}"
    assert isinstance(info.value, ValueError)


def test_scenario_default_builds():
    """The scenario schema's default ``{name: sgd, lr: 1.0}`` resolves."""
    opt = build_server_optimizer({"name": "sgd", "lr": 1.0})
    assert callable(opt.init) and callable(opt.update)
