"""Accounting of heterogeneous sequences of Gaussian mechanisms (DIFF2's σ1 restart and σ2 difference rounds), and
the full-batch plan that calibrates σ1 over a whole run.

Oracles: the single-mechanism ``epsilon()``; for q = 1, RDP of a Gaussian mechanism is α/(2σ²) exactly, so the
composition's RDP is α·Σ_i k_i/(2σ_i²), turned into ε with the conversion of Balle et al. 2020 (written out here);
and a composition of Gaussian mechanisms with q = 1 is exactly one Gaussian mechanism with μ² = Σ_i k_i/σ_i²
(Dong, Roth, Su, "Gaussian Differential Privacy", 2019), whose δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)
(Balle & Wang, ICML 2018), solved for ε here with scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedsim.dp_plan import full_batch_settings, scenario_plan
from fedsim.errors import ConfigError
from fedsim.privacy.accounting import Mechanism, epsilon, epsilon_of_sequence, sequence_curve
from fedsim.privacy.plan import FullBatchSettings, plan_from_scenario, spend_rounds
from fedsim.scenario import parse_scenario

DELTA = 1e-5
SEQ = [Mechanism(5.0, 1.0, 13), Mechanism(8.0, 1.0, 87)]


def exact_gaussian_epsilon(mechs, delta):
    mu = math.sqrt(sum(m.steps / m.noise_multiplier**2 for m in mechs))
    f = lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta  # noqa: E731
    return brentq(f, 0.0, 200.0, xtol=1e-12)


def rdp_closed_form(mechs, delta):
    from opacus.accountants import RDPAccountant

    orders = np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = orders * sum(m.steps / (2 * m.noise_multiplier**2) for m in mechs)
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.nanmin(eps))


@pytest.mark.parametrize("accountant", ["rdp", "prv", "pld"])
def test_one_mechanism_is_the_single_mechanism_epsilon(accountant):
    m = Mechanism(1.1, 0.01, 1000)
    assert epsilon_of_sequence(accountant, [m], DELTA) == pytest.approx(
        epsilon(accountant, m, DELTA), rel=1e-9
    )


def test_rdp_of_a_sequence_is_the_closed_form():
    assert epsilon_of_sequence("rdp", SEQ, DELTA) == pytest.approx(rdp_closed_form(SEQ, DELTA), rel=1e-6)


@pytest.mark.parametrize(("accountant", "slack"), [("pld", 1e-3), ("prv", 0.02)])
def test_pld_and_prv_of_a_sequence_match_the_exact_gaussian_composition(accountant, slack):
    exact = exact_gaussian_epsilon(SEQ, DELTA)  # 6.3345 (and RDP, looser: 6.82)
    got = epsilon_of_sequence(accountant, SEQ, DELTA)
    assert exact - 1e-6 <= got <= exact * (1 + slack)  # an upper bound, tight to its accountant's error
    assert got < epsilon_of_sequence("rdp", SEQ, DELTA)


def test_order_of_the_mechanisms_does_not_matter_and_splitting_a_count_does_not_either():
    for acc in ("rdp", "pld"):
        a = epsilon_of_sequence(acc, SEQ, DELTA)
        assert epsilon_of_sequence(acc, SEQ[::-1], DELTA) == pytest.approx(a, rel=1e-6)
        split = [Mechanism(5.0, 1.0, 6), Mechanism(8.0, 1.0, 87), Mechanism(5.0, 1.0, 7)]
        assert epsilon_of_sequence(acc, split, DELTA) == pytest.approx(a, rel=1e-6)


def test_curve_grows_and_ends_at_the_total():
    prefixes = [[Mechanism(5.0, 1.0, 1)], [Mechanism(5.0, 1.0, 1), Mechanism(8.0, 1.0, 3)], SEQ]
    for acc in ("rdp", "prv", "pld"):
        curve = sequence_curve(acc, prefixes, DELTA)
        assert curve == sorted(curve) and curve[-1] == pytest.approx(epsilon_of_sequence(acc, SEQ, DELTA))


def test_bad_sequences_are_config_errors():
    with pytest.raises(ConfigError, match="mechanisms must be a non-empty"):
        epsilon_of_sequence("rdp", [], DELTA)
    with pytest.raises(ConfigError, match="privacy.accountants"):
        epsilon_of_sequence("nope", SEQ, DELTA)


DIFF2 = {
    "name": "p",
    "rounds": 30,
    "data": {"dataset": "diabetes", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 4},
    "model": {"name": "mlp", "args": {"hidden": [10], "activation": "softplus"}},
    "strategy": {
        "name": "diff2",
        "clients_per_round": 4,
        "args": {"lr": 0.5, "restart_every": 4, "clip1": 1.0, "clip2": 1.0, "noise_ratio": 1.5},
    },
}


def plan(privacy, strategy=None):
    raw = {**DIFF2, "privacy": {"level": "sample", **privacy}}
    if strategy:
        raw["strategy"] = {**DIFF2["strategy"], **strategy}
    return scenario_plan(parse_scenario(raw))


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibration_meets_the_target_and_0_2_percent_less_noise_would_not(accountant):
    p = plan({"target_epsilon": 3.0, "accountants": [accountant]})
    sch = p.schedule
    assert p.calibrated and sch.noise_multiplier2 == pytest.approx(1.5 * sch.noise_multiplier1)
    assert [m.steps for m in sch.mechanisms()] == [8, 22]  # restarts at r = 1, 5, ..., 29
    eps = epsilon_of_sequence(accountant, sch.mechanisms(), 1e-5)
    assert eps <= 3.0
    less = sch.noise_multiplier1 * 0.998
    lower = [Mechanism(less, 1.0, 8), Mechanism(less * 1.5, 1.0, 22)]
    assert epsilon_of_sequence(accountant, lower, 1e-5) > 3.0


def test_given_sigma_is_accounted_and_the_spend_is_the_sequence():
    p = plan({"noise_multiplier": 4.0, "accountants": ["rdp", "pld"]})
    spent = spend_rounds(p)
    mechs = [Mechanism(4.0, 1.0, 8), Mechanism(6.0, 1.0, 22)]
    assert spent.epsilon["rdp"] == pytest.approx(rdp_closed_form(mechs, 1e-5), rel=1e-6)
    assert spent.epsilon["pld"] == pytest.approx(exact_gaussian_epsilon(mechs, 1e-5), rel=1e-3)
    assert spent.rounds_at[-1] == 30 and spent.curve["rdp"] == sorted(spent.curve["rdp"])
    half = spend_rounds(p, 10)  # what a run stopped after 10 rounds spent: 3 restarts, 7 differences
    assert half.epsilon["rdp"] == pytest.approx(
        rdp_closed_form([Mechanism(4.0, 1.0, 3), Mechanism(6.0, 1.0, 7)], 1e-5), rel=1e-6
    )


@pytest.mark.parametrize(
    ("privacy", "strategy", "field"),
    [
        ({"target_epsilon": 0.001}, None, "privacy.target_epsilon"),
        ({"level": "client", "noise_multiplier": 1.0}, None, "privacy.level"),
        ({"clip": 2.0}, None, "privacy.clip"),
        (
            {"noise_multiplier": 1.0},
            {"args": {"lr": 0.5, "noise_multiplier1": 1.0}},
            "strategy.args.noise_multiplier1",
        ),
    ],
)
def test_bad_privacy_settings_are_one_line_errors(privacy, strategy, field):
    with pytest.raises(ConfigError) as err:
        plan(privacy, strategy)
    assert err.value.field == field and "\n" not in str(err.value)


def test_the_strategy_gives_the_settings_the_plan_accounts():
    # oracle: DIFF2's arguments written out by hand; dp_gd is T = 1 with C1 = C2 = clip and σ2 = σ1
    sc = parse_scenario(
        {**DIFF2, "privacy": {"level": "sample", "noise_multiplier": 4.0, "accountants": ["rdp"]}}
    )
    settings = full_batch_settings(sc)
    assert settings == FullBatchSettings(restart_every=4, clip1=1.0, clip2=1.0, noise_ratio=1.5)
    by_hand = plan_from_scenario(sc, client_sizes=[10] * 4, full_batch=settings)
    assert scenario_plan(sc, client_sizes=[10] * 4) == by_hand
    gd = {"name": "dp_gd", "clients_per_round": 4, "args": {"lr": 0.5, "clip": 2.0}}
    assert full_batch_settings(parse_scenario({**DIFF2, "strategy": gd})) == FullBatchSettings(
        1, 2.0, 2.0, 1.0
    )
    assert full_batch_settings(parse_scenario({**DIFF2, "strategy": {"clients_per_round": 4}})) is None


@pytest.mark.parametrize("restart_every", [1, 3, 8])
def test_the_settings_round_kinds_are_the_strategy_s(restart_every):
    from strategies import build_strategy

    sc = parse_scenario(
        {**DIFF2, "strategy": {**DIFF2["strategy"], "args": {"lr": 0.5, "restart_every": restart_every}}}
    )
    strategy = build_strategy(sc.strategy, sc.population.clients)
    settings = strategy.privacy_settings()
    assert [settings.kind(r) for r in range(1, 40)] == [strategy.config.kind(r) for r in range(1, 40)]


def test_a_full_batch_plan_without_the_strategy_settings_is_refused():
    sc = parse_scenario(
        {**DIFF2, "privacy": {"level": "sample", "noise_multiplier": 4.0, "accountants": ["rdp"]}}
    )
    with pytest.raises(ValueError, match="strategy 'diff2' is full-batch: pass full_batch="):
        plan_from_scenario(sc, client_sizes=[10] * 4)
    fedavg = parse_scenario(
        {**DIFF2, "strategy": {"clients_per_round": 4}, "privacy": {"noise_multiplier": 1.0}}
    )
    with pytest.raises(ValueError, match="not a full-batch strategy"):
        plan_from_scenario(fedavg, full_batch=FullBatchSettings(4, 1.0, 1.0, 1.5))
