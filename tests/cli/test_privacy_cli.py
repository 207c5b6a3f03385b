"""``fedsim privacy``: the DP report from the scenario alone (files, keys, numbers), and bad privacy settings as
one-line errors with exit code 2 before anything runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]

DATA = "data: {dataset: blobs, args: {shape: [4], samples_per_client: 2}, partitioner: iid, partitioner_args: {}}\n"
BASE = (
    DATA
    + """name: p
rounds: 10000
population: {clients: 1000}
strategy: {clients_per_round: 10}
"""
)


fedsim = run_cli  # in process: see tests/cli_helpers.py


def test_report_from_the_scenario_alone_reproduces_the_spec_example(tmp_path):
    # The spec's example report: q 0.01, σ 1.1, 10 000 rounds, δ 1e-5 -> RDP 5.632, PLD 5.193, PRV 5.203
    # (the privacy spec's worked example, computed with opacus 1.6 / dp-accounting 0.6).
    sc = tmp_path / "s.yaml"
    sc.write_text(BASE + "privacy: {level: client, clip: 1.0, noise_multiplier: 1.1, delta: 1.0e-5}\n")
    out_dir = tmp_path / "report"
    t0 = time.monotonic()
    out = fedsim("privacy", str(sc), "-o", str(out_dir))
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert "epsilon_rdp=5.63" in out.stdout and f"report={out_dir}" in out.stdout
    assert took < 90, took  # seconds, not a training run (imports included; a 2-core CI machine)
    rec = json.loads((out_dir / "privacy.json").read_text())
    spec_keys = {
        "level", "mechanism", "clip", "per_layer", "noise_multiplier", "sample_rate", "sampling", "rounds",
        "delta", "epsilon", "epsilon_per_round", "calibrated", "insecure_seed", "extrapolated",
    }  # fmt: skip
    assert spec_keys <= set(rec)
    assert rec["sample_rate"] == pytest.approx(0.01) and rec["rounds"] == 10000 and rec["calibrated"] is False
    assert rec["epsilon"]["rdp"] == pytest.approx(5.632, rel=1e-3)
    assert rec["epsilon"]["pld"] == pytest.approx(5.193, rel=1e-3)
    assert rec["epsilon"]["prv"] == pytest.approx(5.203, rel=1e-3)
    for acc, curve in rec["epsilon_per_round"].items():
        assert len(curve) == len(rec["epsilon_rounds"]) and curve[-1] == pytest.approx(rec["epsilon"][acc])
    md = (out_dir / "privacy.md").read_text()
    assert "adding or removing all of one client's data" in md and "NOT PRIVATE" not in md
    assert (out_dir / "plots" / "privacy_epsilon.png").stat().st_size > 1000


def test_sample_level_report_reproduces_tensorflow_privacys_dp_sgd_number(tmp_path):
    # tensorflow_privacy compute_dp_sgd_privacy_test.py: n 60000, batch 150, σ 1.3, 15 epochs, δ 1e-5 -> 0.72422
    # (RDP): one client holding all 60 000 examples, 15 rounds of one epoch.
    sc = tmp_path / "s.yaml"
    sc.write_text(
        "data: {dataset: blobs, args: {shape: [2], samples_per_client: 60000}, partitioner: iid,\n"
        "       partitioner_args: {}}\n"
        "name: p\nrounds: 15\npopulation: {clients: 1}\nstrategy: {clients_per_round: 1}\n"
        "client: {epochs: 1, batch_size: 150}\n"
        "privacy: {level: sample, noise_multiplier: 1.3, accountants: [rdp]}\n"
    )
    out = fedsim("privacy", str(sc), "-o", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "r" / "privacy.json").read_text())
    assert rec["level"] == "sample" and rec["population"] == 60000, rec["population"]
    assert rec["local_steps"] == 400 and rec["rounds"] == 6000 and rec["federated_rounds"] == 15
    assert rec["epsilon"]["rdp"] == pytest.approx(0.72422, rel=1e-3)
    md = (tmp_path / "r" / "privacy.md").read_text()
    assert "adding or removing one example of one client's data" in md


def test_calibrated_insecure_and_extrapolated_report(tmp_path):
    sc = tmp_path / "s.yaml"
    sc.write_text(
        DATA + "name: p\nrounds: 50\npopulation: {clients: 1000}\nstrategy: {clients_per_round: 50}\n"
        "privacy: {target_epsilon: 4.0, accountants: [rdp], insecure_seed: true,\n"
        "          deployed_cohort: 1000, deployed_population: 100000}\n"
    )
    out = fedsim("privacy", str(sc), "-o", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "NOT PRIVATE: insecure seed" in out.stdout
    rec = json.loads((tmp_path / "r" / "privacy.json").read_text())
    assert rec["calibrated"] and rec["insecure_seed"]
    ex = rec["extrapolated"]
    # the target holds for the deployed setting; the simulation keeps the noise on the mean: σ = σ'·s/s'
    assert ex["epsilon"]["rdp"] <= 4.0 and ex["epsilon"]["rdp"] > 3.9
    assert ex["noise_multiplier"] == pytest.approx(rec["noise_multiplier"] * 1000 / 50)
    assert ex["sample_rate"] == pytest.approx(0.01)
    md = (tmp_path / "r" / "privacy.md").read_text()
    assert md.startswith("# NOT PRIVATE: insecure seed") and "not the deployed guarantee" in md


@pytest.mark.parametrize(
    ("privacy", "expected"),
    [
        ("{noise_multiplier: 0}", "privacy.noise_multiplier must be a number > 0.0. Got 0."),
        ("{noise_multiplier: -1.5}", "privacy.noise_multiplier must be a number > 0.0. Got -1.5."),
        ("{delta: 1.0}", "privacy.delta must be a number < 1.0. Got 1.0."),
        ("{clip: 0}", "privacy.clip must be a number > 0.0. Got 0."),
        ("{accountants: [rdp, moments]}", "privacy.accountants.1 must be one of 'rdp', 'prv' or 'pld'."),
        ("{target_epsilon: 0.0001}", "privacy.target_epsilon"),
        ("{sampling: fixed_size, accountants: [prv]}", "prv"),
    ],
)
def test_bad_privacy_settings_are_one_line_exit_2(tmp_path, privacy, expected):
    sc = tmp_path / "s.yaml"
    sc.write_text(BASE + f"privacy: {privacy}\n")
    for command in ("privacy", "run"):
        out = fedsim(command, str(sc), "-o", str(tmp_path / "o"))
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"fedsim: error: {sc}: "), lines
        assert expected in lines[0], lines[0]
    assert not (tmp_path / "o").exists()  # nothing ran, nothing written


def test_privacy_of_a_scenario_without_privacy_says_so(tmp_path):
    out = fedsim("privacy", "scenarios/quickstart.yaml", "-o", str(tmp_path / "r"))
    assert out.returncode == 2 and "privacy must be set in the scenario" in out.stderr


def test_no_privacy_gives_the_non_private_baseline_of_a_dp_scenario():
    from fedsim.cli import with_overrides
    from fedsim.scenario import load_scenario

    sc = load_scenario(ROOT / "scenarios" / "dp-fedavg.yaml")
    base = with_overrides(sc, "dp-fedavg.yaml", no_privacy=True)
    assert base.privacy is None and base.name == "dp-fedavg-no-privacy"
    assert base.model_dump(exclude={"privacy", "name"}) == sc.model_dump(exclude={"privacy", "name"})
    assert with_overrides(sc, "dp-fedavg.yaml") is sc
    assert "--no-privacy" in fedsim("run", "--help").stdout


def test_client_level_privacy_never_builds_data(tmp_path, monkeypatch):
    # 10 000 synthetic clients: building them took ~70 s of a 75 s report; the accountants need none of it.
    from typer.testing import CliRunner

    import fedsim.engine.setup as setup
    from fedsim.cli import app

    def refuse(*args, **kwargs):
        raise AssertionError("fedsim privacy built data for a client-level report")

    monkeypatch.setattr(setup, "build_data", refuse)
    monkeypatch.setattr(setup, "build_initial_model", refuse)
    sc = tmp_path / "s.yaml"
    sc.write_text(
        "name: big\nrounds: 100\ndata: {dataset: synthetic, partitioner: iid, partitioner_args: {}}\n"
        "population: {clients: 10000}\nstrategy: {clients_per_round: 100}\n"
        "privacy: {level: client, clip: 1.0, noise_multiplier: 1.1, accountants: [rdp]}\n"
    )
    out = CliRunner().invoke(app, ["privacy", str(sc), "-o", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "r" / "privacy.json").read_text())["population"] == 10000
