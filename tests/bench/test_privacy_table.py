"""``bench/privacy_table.py``: the published ε of a shipped scenario agrees with the libraries called directly on
the mechanism ``privacy.json`` states, and ``docs/privacy.md``'s table lists every DP scenario of ``scenarios/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import privacy_table  # noqa: E402

TOLERANCE = {"rdp": 5e-3, "prv": 1e-3, "pld": 1e-3}
"""rdp: opacus (published) against dp_accounting (independent), two implementations whose grids of orders differ
(dp_accounting also drops orders whose series does not converge), measured 1e-3 apart at most on the shipped
scenarios; prv and pld: the same library on the same mechanism."""


def test_every_dp_scenario_is_in_the_doc_table():
    found = {p.name for p in privacy_table.dp_scenarios()}
    assert found  # the shipped DP scenarios (discovered, not listed here)
    assert privacy_table.doc_scenarios() == found


def test_discovery_takes_privacy_blocks_and_self_noised_full_batch_strategies(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nprivacy: {level: client}\n")
    (tmp_path / "b.yaml").write_text(
        "name: b\nstrategy: {name: dp_gd, args: {lr: 0.1, noise_multiplier: 2.0}}\n"
    )
    (tmp_path / "c.yaml").write_text("name: c\nstrategy: {name: dp_gd, args: {lr: 0.1}}\n")
    (tmp_path / "d.yaml").write_text("name: d\nprivacy: null\n")
    assert [p.name for p in privacy_table.dp_scenarios(tmp_path)] == ["a.yaml", "b.yaml"]


@pytest.mark.parametrize("scenario", ["dp-fedavg.yaml", "dp-gd-diabetes.yaml"])  # client level; a sequence
def test_published_epsilon_agrees_with_the_libraries(scenario):
    rows = privacy_table.rows(ROOT / "scenarios" / scenario)
    assert {r["accountant"] for r in rows} == {"rdp", "prv", "pld"}
    for r in rows:
        assert r["published"] == pytest.approx(r["independent"], rel=TOLERANCE[r["accountant"]]), r


def test_independent_accounting_of_a_sample_level_record_uses_each_accountants_worst_group():
    # Oracle: the spec's TF-Privacy case, n 60000, B 150, σ 1.3, 15 epochs, δ 1e-5 -> 0.72422 by RDP
    # (tensorflow_privacy compute_dp_sgd_privacy_test.py): q = 1/400, 6000 steps.
    group = {"steps_per_epoch": 400, "examples": 60000, "sample_rate": 1 / 400, "steps": 6000}
    record = {
        "level": "sample",
        "delta": 1e-5,
        "noise_multiplier_accounted": 1.3,
        "worst_client_by_accountant": {"rdp": group},
        "sampling": "poisson",
    }
    eps, words = privacy_table.independent(record, "rdp")
    assert eps == pytest.approx(0.72422, rel=2e-3) and "6000 steps" in words


def test_the_command_prints_the_table_and_writes_between_the_markers(tmp_path):
    doc = tmp_path / "privacy.md"
    doc.write_text(f"intro\n{privacy_table.START}\nold\n{privacy_table.END}\nrest\n")
    privacy_table.write_doc("| new |", doc)
    assert doc.read_text() == f"intro\n{privacy_table.START}\n| new |\n{privacy_table.END}\nrest\n"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "privacy_table.py"),
            str(ROOT / "scenarios" / "dp-gd-diabetes.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("| dp-gd-diabetes.yaml |") == 3
