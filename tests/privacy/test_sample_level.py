"""Sample-level DP accounting: each client's local schedule, the worst client, calibration and the report keys.

Oracles: Opacus' own ``DPDataLoader`` / ``PrivacyEngine.make_private`` for the local schedule; tensorflow_privacy's
published DP-SGD number (``compute_dp_sgd_privacy_test.py``: n 60000, batch 150, σ 1.3, 15 epochs, δ 1e-5 →
ε 0.72422 by RDP) for the whole plan; the accountants called directly on every client for the worst case.
"""

from __future__ import annotations

import math

import pytest
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from fedsim.engine.messages import train_config
from fedsim.errors import ConfigError
from fedsim.privacy.accounting import Mechanism, epsilon
from fedsim.privacy.plan import plan_from_scenario, spend_rounds
from fedsim.privacy.report import privacy_record
from fedsim.privacy.sample_level import LocalSchedule
from fedsim.scenario import parse_scenario

# tensorflow_privacy compute_dp_sgd_privacy_test.py: n 60000, batch 150, σ 1.3, 15 epochs, δ 1e-5
TFP_EPSILON = 0.72422


@pytest.mark.parametrize(("n", "batch"), [(60000, 150), (13, 4), (5, 4), (1, 4), (49, 1), (100, 32), (7, 7)])
def test_local_schedule_is_what_opacus_builds(n, batch):
    loader = DataLoader(TensorDataset(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)), batch_size=batch)
    dp_loader = DPDataLoader.from_data_loader(loader)
    s = LocalSchedule(n, batch)
    assert s.steps_per_epoch == len(dp_loader)
    assert s.sample_rate == dp_loader.sample_rate
    if n * s.sample_rate >= 1:  # Opacus' own divisor (it would be 0 for n=49, B=1: 49 * (1/49) < 1 in floats)
        model = torch.nn.Linear(1, 2)
        _, opt, _ = PrivacyEngine().make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )
        assert s.expected_batch_size == opt.expected_batch_size


def scenario(clients=1, rounds=15, epochs=1, batch=150, **privacy):
    return parse_scenario(
        {
            "name": "s",
            "rounds": rounds,
            "population": {"clients": clients},
            "client": {"epochs": epochs, "batch_size": batch},
            "strategy": {"clients_per_round": 1},
            "privacy": {"level": "sample", **privacy},
        }
    )


@pytest.mark.parametrize(("rounds", "epochs"), [(15, 1), (1, 15), (5, 3)])
def test_plan_reproduces_tensorflow_privacys_dp_sgd_number(rounds, epochs):
    plan = plan_from_scenario(
        scenario(rounds=rounds, epochs=epochs, noise_multiplier=1.3, accountants=["rdp"]),
        client_sizes=[60000],
    )
    assert plan.mechanism.sample_rate == 150 / 60000 and plan.mechanism.steps == 15 * 400
    assert plan.steps_per_round == epochs * 400 and plan.rounds == rounds
    assert spend_rounds(plan).epsilon["rdp"] == pytest.approx(TFP_EPSILON, rel=1e-3)


def test_the_reported_client_is_the_worst_one_by_every_accountant():
    sizes = [60000, 600, 600, 90, 0]  # a client with one step per epoch (q = 1) has the least protection
    sc = scenario(clients=5, rounds=3, noise_multiplier=1.1)
    plan = plan_from_scenario(sc, client_sizes=sizes)
    spent = spend_rounds(plan)
    assert [g.steps_per_epoch for g in plan.groups] == [1, 4, 400]  # the empty client takes no steps
    assert plan.population == 90 and plan.mechanism.sample_rate == 1.0 and plan.steps_per_round == 1
    for acc in ("rdp", "prv", "pld"):
        each = [
            epsilon(acc, Mechanism(1.1, 1 / s, 3 * s), 1e-5)
            for s in (LocalSchedule(n, 150).steps_per_epoch for n in sizes if n)
        ]
        assert spent.epsilon[acc] == pytest.approx(max(each), rel=1e-9)


def test_calibration_meets_the_target_for_the_worst_client_and_no_less_noise_would():
    sizes = [900, 300, 3000]
    sc = scenario(clients=3, rounds=10, epochs=2, batch=100, target_epsilon=3.0, accountants=["rdp", "pld"])
    plan = plan_from_scenario(sc, client_sizes=sizes)
    assert plan.calibrated

    def worst(sigma):
        return max(epsilon("rdp", Mechanism(sigma, 1 / s, 20 * s), 1e-5) for s in (3, 9, 30))

    assert worst(plan.noise_multiplier) <= 3.0 < worst(plan.noise_multiplier / 1.002)


def test_an_unreachable_target_and_an_empty_partition_are_config_errors():
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        plan_from_scenario(scenario(rounds=200, batch=10, target_epsilon=1e-3), client_sizes=[10])
    with pytest.raises(ConfigError, match="data"):
        plan_from_scenario(scenario(noise_multiplier=1.0), client_sizes=[0])


def test_epsilon_per_round_composes_the_local_steps_of_each_round():
    sc = scenario(clients=2, rounds=4, epochs=2, batch=100, noise_multiplier=1.0, accountants=["rdp", "prv"])
    plan = plan_from_scenario(sc, client_sizes=[1000, 450])
    spent = spend_rounds(plan)
    assert spent.rounds_at == [1, 2, 3, 4] and plan.steps_per_round == 2 * 5
    for i, r in enumerate(spent.rounds_at):
        for acc in ("rdp", "prv"):
            direct = epsilon(acc, Mechanism(1.0, 0.2, r * 10), 1e-5)
            assert spent.curve[acc][i] == pytest.approx(direct, rel=1e-3)
    # a run stopped after 2 rounds spent what 2 rounds of local steps cost
    assert spend_rounds(plan, 2).epsilon["rdp"] == pytest.approx(spent.curve["rdp"][1], rel=1e-9)


def test_the_record_has_the_spec_keys_and_local_steps():
    sc = scenario(clients=2, rounds=4, epochs=2, batch=100, noise_multiplier=1.0, accountants=["rdp"])
    plan = plan_from_scenario(sc, client_sizes=[1000, 450])
    record = privacy_record(plan, spend_rounds(plan), source="scenario")
    for key in (
        "level",
        "mechanism",
        "clip",
        "per_layer",
        "noise_multiplier",
        "sample_rate",
        "sampling",
        "rounds",
        "delta",
        "epsilon",
        "epsilon_per_round",
        "calibrated",
        "insecure_seed",
        "extrapolated",
    ):
        assert key in record
    assert record["level"] == "sample" and record["local_steps"] == 10 and record["rounds"] == 40
    assert record["federated_rounds"] == 4 and record["sample_rate"] == 0.2
    assert [g["clients"] for g in record["client_groups"]] == [1, 1]
    assert math.isclose(max(g["epsilon_rdp"] for g in record["client_groups"]), record["epsilon"]["rdp"])


def test_a_worker_refuses_to_train_sample_level_dp_without_sigma():
    sc = scenario(noise_multiplier=1.0)
    with pytest.raises(ValueError, match="dp_noise_multiplier"):
        train_config(sc, {})
    cfg = train_config(sc, {"dp_noise_multiplier": 0.7})
    assert cfg.sample_dp is not None and cfg.sample_dp.noise_multiplier == 0.7 and cfg.sample_dp.secure
    assert cfg.clip is None
