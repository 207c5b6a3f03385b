"""Sample-level DP: every ε published (each round's, a stopped run's) is the worst over client groups at that
number of rounds, and calibration meets the target for the worst group.

Oracles: dp_accounting's ``PLDAccountant`` composing ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))`` and opacus'
``RDPAccountant``, called directly on every group (q = 1/s, rounds·epochs·s steps); no fedsim accounting function.
"""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from opacus.accountants import RDPAccountant

from fedsim.privacy.plan import plan_from_scenario, spend_rounds
from fedsim.privacy.report import privacy_record
from fedsim.scenario import parse_scenario

DELTA = 1e-5


def scenario(rounds, batch, **privacy):
    return parse_scenario(
        {
            "name": "s",
            "rounds": rounds,
            "population": {"clients": 3},
            "client": {"epochs": 1, "batch_size": batch},
            "strategy": {"clients_per_round": 1},
            "privacy": {"level": "sample", **privacy},
        }
    )


def pld(sigma, q, steps):
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    return PLDAccountant().compose(event, steps).get_epsilon(DELTA)


def rdp(sigma, q, steps):
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(DELTA)


ORACLE = {"pld": pld, "rdp": rdp}


def worst(accountant, sigma, steps_per_epoch, rounds):
    return max(ORACLE[accountant](sigma, 1 / s, rounds * s) for s in steps_per_epoch)


def test_each_rounds_epsilon_is_the_worst_group_at_that_round():
    # clients of 50 and 100 examples at batch 50 (q = 1 and 1/2): by PLD the q = 1/2 group is worst after 1 round
    # (7.63 against 6.33), the q = 1 group after 5 (17.13 against 16.96). Before the fix every round reused the
    # 5-round worst group: 6.33 published after 1 round.
    plan = plan_from_scenario(
        scenario(5, 50, noise_multiplier=0.73, accountants=["pld", "rdp"]), client_sizes=[50, 100]
    )
    spent = spend_rounds(plan)
    assert spent.rounds_at == [1, 2, 3, 4, 5]
    for acc, rel in (("pld", 2e-3), ("rdp", 1e-6)):  # pld: earlier points on a 10x coarser (pessimistic) grid
        expected = [worst(acc, 0.73, (1, 2), r) for r in spent.rounds_at]
        assert spent.curve[acc] == pytest.approx(expected, rel=rel)
        assert spent.epsilon[acc] == pytest.approx(expected[-1], rel=1e-9)
    assert spent.curve["pld"][0] == pytest.approx(7.633, abs=1e-3)
    # a run stopped early: its ε (and the group privacy.json names) is the worst after the rounds it ran
    for r in (1, 3):
        stopped = spend_rounds(plan, r)
        for acc in ("pld", "rdp"):
            assert stopped.epsilon[acc] == pytest.approx(worst(acc, 0.73, (1, 2), r), rel=1e-9)
    record = privacy_record(plan, spend_rounds(plan, 1), source="run", rounds_run=1)
    named = record["worst_client_by_accountant"]["pld"]
    assert pld(0.73, named["sample_rate"], named["steps"]) == pytest.approx(
        record["epsilon"]["pld"], rel=1e-9
    )
    assert named["steps_per_epoch"] == 2


def test_calibration_with_pld_first_meets_the_target_for_every_group_and_no_less_noise_would():
    # three groups (1, 2 and 9 steps per epoch); pld first (its probes below its grid's smallest σ count as
    # spending more than the target instead of aborting the search)
    target, steps_per_epoch = 8.0, (1, 2, 9)
    plan = plan_from_scenario(
        scenario(5, 50, target_epsilon=target, accountants=["pld", "rdp"]), client_sizes=[50, 100, 420]
    )
    sigma = plan.noise_multiplier
    assert plan.calibrated and [g.steps_per_epoch for g in plan.groups] == list(steps_per_epoch)
    assert worst("pld", sigma, steps_per_epoch, 5) <= target < worst("pld", sigma / 1.001, steps_per_epoch, 5)
    assert spend_rounds(plan).epsilon["pld"] == pytest.approx(
        worst("pld", sigma, steps_per_epoch, 5), rel=1e-9
    )
