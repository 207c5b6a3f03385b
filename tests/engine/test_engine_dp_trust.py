"""The engine side of DP trust (in-process Grid, no Ray): secret cohorts drawn from the whole population, DP
refused by every loop that does not implement it, the mechanism recorded in every row, and un-privatised
diagnostics withheld unless ``privacy.release_diagnostics``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from local_grid import LocalGrid, MemoryRecorder

from fedsim.engine.loop import FAMILIES, family_of, privacy_levels
from fedsim.engine.server import Engine
from fedsim.engine.sync_loop import draw_cohort
from fedsim.errors import ConfigError
from fedsim.privacy.release import DIAGNOSTIC_FIELDS, is_privatised
from fedsim.randomness import Stream, generator
from fedsim.scenario import parse_scenario
from strategies import build_strategy
from strategies.dp import ClientLevelDP
from strategies.fedavg import FedAvg

SMALL = {
    "name": "dp-trust",
    "seed": 1,
    "rounds": 3,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 40},
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "client": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedavg", "clients_per_round": 10},
}


def run(privacy, monkeypatch=None, **over):
    """Run a small scenario; return the recorder, the engine and the cohort each round sent to training."""
    sc = parse_scenario({**SMALL, **over, "privacy": privacy})
    cohorts: list[list[int]] = []
    if monkeypatch is not None:
        train_round = Engine.train_round

        def spy(self, grid, nodes, rnd, params, clients, *args, **kwargs):
            cohorts.append(sorted(clients))
            return train_round(self, grid, nodes, rnd, params, clients, *args, **kwargs)

        monkeypatch.setattr(Engine, "train_round", spy)
    rec = MemoryRecorder()
    engine = Engine(sc, rec, expected_workers=2)
    engine.run(LocalGrid([11, 22]))
    if monkeypatch is not None:
        monkeypatch.undo()
    return rec, engine, cohorts


# --- 1. secret cohorts -------------------------------------------------------------------------------------


def test_secure_dp_runs_draw_different_cohorts_and_insecure_ones_repeat(monkeypatch):
    secure = {"noise_multiplier": 1.0, "accountants": ["rdp"]}
    _, e1, a = run(secure, monkeypatch)
    _, e2, b = run(secure, monkeypatch)
    assert (
        len(a) == len(b) == 3 and a != b
    )  # Poisson cohorts of 40 clients at q = 1/4: equal by chance with p < 1e-20
    assert e1.cohort_seed != e2.cohort_seed and e1.cohort_seed != SMALL["seed"]
    insecure = {**secure, "insecure_seed": True}
    _, _, c = run(insecure, monkeypatch)
    _, _, d = run(insecure, monkeypatch)
    assert len(c) == 3 and c == d


def test_the_cohort_secret_is_written_nowhere(monkeypatch):
    rec, engine, _ = run({"noise_multiplier": 1.0, "accountants": ["rdp"], "release_diagnostics": True})
    secret = str(engine.cohort_seed)
    assert len(secret) > 20  # 128 bits from the OS CSPRNG
    assert secret not in json.dumps(rec.rows) and secret not in json.dumps(engine.scenario_dict)


def test_the_privacy_report_says_the_insecure_cohorts_are_not_private():
    from fedsim.dp_plan import scenario_plan_and_spend
    from fedsim.privacy.report import NOT_PRIVATE, privacy_record, statement

    for insecure in (True, False):
        sc = parse_scenario(
            {**SMALL, "privacy": {"noise_multiplier": 1.0, "accountants": ["rdp"], "insecure_seed": insecure}}
        )
        plan, spent = scenario_plan_and_spend(sc)
        text = statement(privacy_record(plan, spent, source="scenario"), plan)
        cohort_lines = [line for line in text.splitlines() if "scenario.yaml publishes" in line]
        assert bool(cohort_lines) == insecure and all(NOT_PRIVATE in line for line in cohort_lines)
        assert ("seeded by the OS CSPRNG (never written out)" in text) == (not insecure)


# --- 2. cohorts drawn from the whole population ------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["poisson", "fixed_size"])
def test_an_online_client_is_in_the_cohort_with_the_accounted_q(sampling):
    """Knowing who is online (public seed), a client's chance to be trained must still be the q = s/N the
    accountant is told. Drawing a fixed-size cohort among the online half would double it."""
    n, s, trials = 40, 10, 4000
    dp = ClientLevelDP(
        inner=FedAvg(clients_per_round=s, server_optimizer={"name": "sgd", "lr": 1.0}),
        population=n, noise_multiplier=1.0, clip=1.0, generator=torch.Generator(), sampling=sampling,
    )  # fmt: skip
    state = dp.init({"w": torch.zeros(1)})
    online = np.arange(0, n, 2)  # half the population is online
    hits = np.zeros(n)
    for t in range(trials):
        _, present = draw_cohort(
            dp, state, round=t, population=n, online=online, rng=generator(0, Stream.ROUND, t),
            secret_rng=generator(1, Stream.COHORT, t),
        )  # fmt: skip
        assert set(present) <= set(online.tolist())
        hits[present] += 1
    q = s / n
    tol = 4.5 * np.sqrt(q * (1 - q) / trials)  # 4.5 binomial standard deviations
    assert abs(hits[online].mean() / trials - q) < 0.01  # (fixed size among the online: 0.5)
    assert np.abs(hits[online] / trials - q).max() < tol
    assert hits[1::2].sum() == 0


def test_the_engine_samples_a_fixed_size_cohort_from_everyone_and_drops_the_offline():
    rec, _, _ = run(
        {
            "noise_multiplier": 1.0,
            "accountants": ["rdp"],
            "sampling": "fixed_size",
            "release_diagnostics": True,
        },
        rounds=4,
        population={"clients": 40, "devices": {"availability": 0.5}},
    )
    assert all(r["selected"] == 10 for r in rec.rows)  # s sampled of all N, whoever is online
    assert sum(r["dropped_offline"] for r in rec.rows) > 0  # then the offline ones are dropped
    assert all(r["clients"] == 10 - r["dropped"] for r in rec.rows)


# --- 3. every loop that does not implement DP refuses it ---------------------------------------------------

EVENT = {"strategy": {"name": "fedfix", "clients_per_round": 10, "args": {"window_s": 0.5}}}
GOSSIP = {
    "population": {"clients": 12},
    "strategy": {"name": "gossip"},
    "gossip": {"topology": {"kind": "regular", "args": {"k": 4}}, "ticks": 20, "eval_every": 10},
}
DIFF2 = {
    "data": {"dataset": "diabetes", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 5},
    "model": {"name": "mlp", "args": {"hidden": [6], "activation": "softplus"}},
    "strategy": {"name": "dp_gd", "clients_per_round": 5, "args": {"lr": 0.3, "clip": 0.8}},
}
LOOPS = {"event": EVENT, "gossip": GOSSIP, "diff2": DIFF2, "sync": {}}


@pytest.mark.parametrize(
    ("loop", "level"), [(lp, lv) for lp in LOOPS for lv in ("client", "sample") if lv not in privacy_levels(lp)]
)
def test_every_loop_refuses_a_dp_level_it_does_not_implement_before_anything_starts(loop, level):
    sc = parse_scenario({**SMALL, **LOOPS[loop], "privacy": {"level": level, "noise_multiplier": 1.0}})
    assert family_of(build_strategy(sc.strategy, sc.population.clients)) == loop
    grid, rec = LocalGrid([11, 22]), MemoryRecorder()
    with pytest.raises(ConfigError, match=r"^privacy must be null with strategy .* loop implements"):
        Engine(sc, rec, expected_workers=2).run(grid)
    assert grid.prepared == [] and grid.sent == [] and rec.rows == []


def test_the_loops_declare_dp_only_where_the_tests_run_it():
    # sync: client (this file, test_engine_dp) and sample (test_engine_sample_dp); diff2: sample
    # (test_engine_diff2); event and gossip: none (refused by the driver, above)
    assert set(LOOPS) == set(FAMILIES)  # a new family needs a scenario here, so its refusals are tested
    assert {k: set(privacy_levels(k)) for k in FAMILIES} == {
        "sync": {"client", "sample"}, "diff2": {"sample"}, "event": set(), "gossip": set()
    }  # fmt: skip


# --- 4. the mechanism in every row, against the accountant's multiplier ------------------------------------


def accounted(engine):
    from fedsim.privacy.report import privacy_record

    return privacy_record(*engine.privacy, source="run")


def test_every_client_level_row_records_a_noise_at_least_the_accounted_one():
    rec, engine, _ = run({"noise_multiplier": 1.3, "clip": 0.5, "accountants": ["rdp"]})
    sigma = accounted(engine)["noise_multiplier"]
    assert len(rec.rows) == 3
    for r in rec.rows:
        assert r["dp_noise_std"] / r["dp_clip"] >= sigma * (1 - 1e-12)


def test_adaptive_rows_record_both_mechanisms_and_together_they_cost_no_more_than_accounted():
    """The (sum, count) pair is one Gaussian mechanism of multiplier σ when (σ_Δ)⁻² + (σ_b/Δ_b)⁻² ≤ σ⁻²
    (Gaussian mechanisms compose by adding ρ = 1/(2σ²); Andrew et al., Theorem 1)."""
    rec, engine, _ = run({"noise_multiplier": 0.8, "per_layer": "adaptive", "accountants": ["rdp"]})
    sigma = accounted(engine)["noise_multiplier"]
    for r in rec.rows:
        update = r["dp_noise_std"] / r["dp_clip"]
        count = r["dp_count_noise_std"] / r["dp_count_sensitivity"]
        assert update >= sigma and count >= sigma
        assert update**-2 + count**-2 <= sigma**-2 * (1 + 1e-9)


def test_sample_level_rows_record_the_dp_sgd_noise_the_workers_were_sent():
    rec, engine, _ = run({"level": "sample", "noise_multiplier": 0.9, "clip": 1.5, "accountants": ["rdp"]})
    sigma = accounted(engine)["noise_multiplier"]
    for r in rec.rows:
        assert r["dp_clip"] == 1.5 and r["dp_noise_std"] / r["dp_clip"] >= sigma * (1 - 1e-12)


def test_dp_gd_rows_record_a_noise_at_least_the_accounted_one():
    privacy = {"level": "sample", "noise_multiplier": 0.7, "insecure_seed": True, "accountants": ["rdp"]}
    rec, engine, _ = run(privacy, **DIFF2)
    record = accounted(engine)
    sigma = {m["kind"]: m["noise_multiplier"] for m in record["mechanisms"]}
    for r in rec.rows:
        sensitivity = r["radius"] / (record["clients"] * record["min_examples"])
        assert r["noise_std"] / sensitivity >= sigma[r["kind"]] * (1 - 1e-12)


# --- 5. un-privatised diagnostics are withheld by default --------------------------------------------------


def test_a_dp_run_writes_only_privatised_fields_unless_diagnostics_are_released():
    from fedsim.privacy.report import privacy_record

    withheld, engine, _ = run({"noise_multiplier": 1.0, "accountants": ["rdp"]})
    assert all(is_privatised(k) for r in withheld.rows for k in r)
    assert {"dp_noise_std", "dp_clip", "epsilon_rdp", "test_loss"} <= set(withheld.rows[-1])
    assert privacy_record(*engine.privacy, source="run")["released_diagnostics"] == []
    released, engine, _ = run({"noise_multiplier": 1.0, "accountants": ["rdp"], "release_diagnostics": True})
    written = {k for r in released.rows for k in r}
    assert {"train_loss", "dp_clipped_fraction", "dp_norm_p50", "selected", "virtual_time_s"} <= written
    listed = privacy_record(*engine.privacy, source="run")["released_diagnostics"]
    assert {k for k in written if not is_privatised(k)} <= set(listed) == set(DIAGNOSTIC_FIELDS)


def test_a_run_without_dp_keeps_every_field():
    sc = parse_scenario(SMALL)
    rec = MemoryRecorder()
    Engine(sc, rec, expected_workers=2).run(LocalGrid([11, 22]))
    assert "train_loss" in rec.rows[0] and "dropped_offline" in rec.rows[0]
