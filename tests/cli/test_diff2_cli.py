"""``fedsim privacy`` and ``fedsim validate`` on the DIFF2 / DP-GD scenarios: the report of a heterogeneous sequence
of mechanisms, and bad settings as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.privacy.accounting import Mechanism, epsilon_of_sequence
from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


fedsim = run_cli  # in process: see tests/cli_helpers.py


def test_privacy_report_of_the_diff2_scenario_lists_the_mechanisms_and_meets_the_target(tmp_path):
    out = fedsim("privacy", "scenarios/diff2-diabetes.yaml", "-o", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "r" / "privacy.json").read_text())
    assert rec["strategy"] == "diff2" and rec["level"] == "sample" and rec["calibrated"] is True
    kinds = {m["kind"]: m for m in rec["mechanisms"]}
    t, rounds = rec["restart_every"], rec["rounds"]
    restarts = len(range(1, rounds + 1, t))
    assert kinds["restart"]["rounds"] == restarts and kinds["difference"]["rounds"] == rounds - restarts
    assert kinds["difference"]["noise_multiplier"] == pytest.approx(
        rec["noise_ratio"] * rec["noise_multiplier"]
    )
    # an independent recomputation of the composed sequence, by the first accountant (it calibrated): ε <= 3
    mechs = [Mechanism(m["noise_multiplier"], 1.0, m["rounds"]) for m in rec["mechanisms"]]
    eps = epsilon_of_sequence("rdp", mechs, rec["delta"])
    assert eps == pytest.approx(rec["epsilon"]["rdp"], rel=1e-9) and 2.99 < eps <= 3.0
    assert set(rec["epsilon"]) == {"rdp", "prv", "pld"} and rec["epsilon"]["pld"] <= rec["epsilon"]["rdp"]
    md = (tmp_path / "r" / "privacy.md").read_text()
    assert "DIFF2-GD" in md and "zero-out adjacency" in md and "difference rounds" in md
    assert (tmp_path / "r" / "plots" / "privacy_epsilon.png").stat().st_size > 1000
    assert f"epsilon_rdp={rec['epsilon']['rdp']:.4f}" in out.stdout and "rounds=40" in out.stdout


def test_dp_gd_scenario_validates():
    out = fedsim("validate", "scenarios/dp-gd-diabetes.yaml", "scenarios/diff2-diabetes.yaml")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("clients_per_round: 4", "clients_per_round: 3"), "strategy.clients_per_round"),
        (("restart_every: 4", "restart_every: 0"), "strategy.args.restart_every"),
        (("clip1: 1.0", "clip1: 0.0"), "strategy.args.clip1"),
        (("target_epsilon: 3.0", "target_epsilon: 0.0001"), "privacy.target_epsilon"),
        (("dataset: diabetes", "dataset: digits"), "data.dataset"),
    ],
)
def test_bad_settings_are_one_line_errors_with_exit_code_2(tmp_path, edit, field):
    text = (ROOT / "scenarios" / "diff2-diabetes.yaml").read_text()
    assert edit[0] in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(edit[0], edit[1]))
    out = fedsim("privacy", str(bad), "-o", str(tmp_path / "r"))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and str(bad) in lines[0], out.stderr
