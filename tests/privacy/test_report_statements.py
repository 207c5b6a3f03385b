"""privacy.json / privacy.md say what was accounted: the adjacency, the sampling, the σ accounted, δ with the
sampler's term, the rounds actually composed, and (client level) no data is built for the report."""

from __future__ import annotations

import math

import pytest
from scipy.stats import norm

from fedsim.dp_plan import scenario_plan
from fedsim.privacy.accounting import Mechanism, epsilon
from fedsim.privacy.plan import plan_from_scenario, spend_rounds
from fedsim.privacy.report import privacy_record, statement
from fedsim.scenario import load_scenario

BASE = """name: p
rounds: 40
data: {dataset: blobs, args: {shape: [4], samples_per_client: 2}, partitioner: iid, partitioner_args: {}}
population: {clients: 1000}
strategy: {clients_per_round: 20}
"""


def plan_of(tmp_path, privacy: str):
    path = tmp_path / "s.yaml"
    path.write_text(BASE + f"privacy: {privacy}\n")
    return plan_from_scenario(load_scenario(path, check_names=False))


def test_a_stopped_run_states_the_rounds_it_composed(tmp_path):
    plan = plan_of(tmp_path, "{level: client, clip: 1.0, noise_multiplier: 1.0, accountants: [rdp]}")
    rec = privacy_record(plan, spend_rounds(plan, 10), source="run", rounds_run=10)
    assert rec["rounds"] == 10 and rec["rounds_planned"] == 40
    # oracle: the accountant called on the 10-round mechanism directly
    assert rec["epsilon"]["rdp"] == pytest.approx(epsilon("rdp", Mechanism(1.0, 0.02, 10), 1e-5))
    assert "Over 10 rounds" in statement(rec, plan)


def test_fixed_size_statement_says_replace_one_only(tmp_path):
    plan = plan_of(
        tmp_path,
        "{level: client, clip: 1.0, noise_multiplier: 1.0, sampling: fixed_size, accountants: [rdp]}",
    )
    rec = privacy_record(plan, spend_rounds(plan), source="scenario")
    words = statement(rec, plan)
    assert rec["adjacency"] == "replace one client's data" and rec["sampling"] == "fixed_size"
    assert "adding or removing" not in words and "replacing all of one client's data" in words


def test_adaptive_statement_names_the_update_noise_and_json_the_split(tmp_path):
    plan = plan_of(tmp_path, "{level: client, clip: 1.0, noise_multiplier: 1.0, per_layer: adaptive}")
    rec = privacy_record(plan, spend_rounds(plan), source="scenario")
    # σ = 1, σ_b = 20/20 = 1: the update gets (1 − 1/4)^(−1/2) = 1.1547 (Andrew et al., Theorem 1)
    assert rec["noise_multiplier_accounted"] == 1.0
    assert rec["noise_multiplier_update"] == pytest.approx(1.1547, rel=1e-4)
    assert "1.155 × C_t" in statement(rec, plan) and "1 × clip" not in statement(rec, plan)


def test_delta_includes_the_sampler_term(tmp_path):
    plan = plan_of(tmp_path, "{level: client, clip: 1.0, noise_multiplier: 0.3, accountants: [rdp]}")
    rec = privacy_record(plan, spend_rounds(plan), source="scenario")
    assert rec["adjacency"] == "add/remove one client's data"
    # T·q·[Φ̄(τ − 1/σ) − Φ̄(τ)] with τ = √(106 ln 2), the float64 Box–Muller bound (scipy's normal tail)
    tau = math.sqrt(106 * math.log(2))
    want = 40 * 0.02 * (norm.sf(tau - 1 / 0.3) - norm.sf(tau))
    assert rec["delta_truncation"] == pytest.approx(want, rel=1e-9)
    assert rec["delta_total"] == rec["delta"] + rec["delta_truncation"]


def test_client_level_report_builds_no_data(tmp_path, monkeypatch):
    import fedsim.engine.setup as setup

    def refuse(*a, **k):
        raise AssertionError("the client-level report must not build data")

    monkeypatch.setattr(setup, "build_data", refuse)
    plan = plan_of(tmp_path, "{level: client, clip: 1.0, noise_multiplier: 1.0, accountants: [rdp]}")
    assert privacy_record(plan, spend_rounds(plan), source="scenario")["epsilon"]["rdp"] > 0


def test_prv_and_pld_curves_are_upper_bounds_at_every_round():
    from dataclasses import replace

    from fedsim.privacy.plan import spend

    mech = Mechanism(1.0, 0.01, 1000)
    out = spend(mech, 1e-5, ("pld",))
    curve = out.curve["pld"]
    assert len(curve) == len(out.rounds_at) == 100
    assert curve[-1] == pytest.approx(epsilon("pld", mech, 1e-5))
    for i in (0, 7, 33, 58, 98):  # oracle: the accountant on the prefix itself
        exact = epsilon("pld", replace(mech, steps=out.rounds_at[i]), 1e-5)
        assert curve[i] >= exact * (1 - 1e-9), (i, curve[i], exact)


def test_sample_level_reports_the_worst_group_of_each_accountant(tmp_path):
    # σ 0.73, B 50, 5 rounds, clients of 50 and 100 examples: RDP's worst group is not PLD's.
    # Oracle: dp_accounting's PLDAccountant on each group's Poisson-subsampled Gaussian, maximum taken here.
    import dp_accounting

    path = tmp_path / "s.yaml"
    path.write_text(
        BASE.replace("rounds: 40", "rounds: 5")
        .replace("clients: 1000", "clients: 2")
        .replace("clients_per_round: 20", "clients_per_round: 2")
        + "client: {batch_size: 50, epochs: 1}\n"
        + "privacy: {level: sample, clip: 1.0, noise_multiplier: 0.73, accountants: [rdp, pld]}\n"
    )
    plan = plan_from_scenario(load_scenario(path, check_names=False), client_sizes=[50, 100])
    rec = privacy_record(plan, spend_rounds(plan), source="scenario")

    def pld(q, steps):
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(0.73))
        return dp_accounting.pld.PLDAccountant().compose(event, steps).get_epsilon(1e-5)

    truth = max(pld(1.0, 5), pld(0.5, 10))
    assert rec["epsilon"]["pld"] == pytest.approx(truth, rel=1e-3)
    assert set(rec["worst_client_by_accountant"]) == {"rdp", "pld"}


def test_full_batch_report_states_zero_out_adjacency():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sc = load_scenario(root / "scenarios" / "diff2-diabetes.yaml", check_names=False)
    plan = scenario_plan(sc, client_sizes=[40] * sc.population.clients)
    rec = privacy_record(plan, spend_rounds(plan), source="scenario")
    assert rec["adjacency"].startswith("zero-out one example")
    assert (
        "zero-out adjacency" in statement(rec, plan)
        and "adding or removing one example" not in statement(rec, plan).split("Adding or removing")[0]
    )
