"""The command line as a user meets it: help, validate, and one-line errors with exit code 2."""

from __future__ import annotations

from pathlib import Path

from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


fedsim = run_cli  # in process: see tests/cli_helpers.py


def test_help_lists_the_commands():
    out = fedsim("--help")
    assert out.returncode == 0
    for word in ("run", "validate", "Scenario files"):
        assert word in out.stdout
    run_help = fedsim("run", "--help")
    assert run_help.returncode == 0 and "--rounds" in run_help.stdout and "test_accuracy" in run_help.stdout


def test_validate_ok_and_bad_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstrategy: {clients_per_round: 0}\n")
    out = fedsim("validate", "scenarios/quickstart.yaml", str(bad))
    assert out.returncode == 2
    assert "scenarios/quickstart.yaml: ok" in out.stdout
    lines = out.stderr.strip().splitlines()
    assert lines == [f"fedsim: error: {bad}: strategy.clients_per_round must be a number >= 1. Got 0."]


def test_run_with_a_bad_file_is_one_line_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {name: resnet}\n")
    out = fedsim("run", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"fedsim: error: {bad}: model.name must be one of cnn, mlp, simple_cnn. Got 'resnet'."
    ]


def test_run_with_a_missing_file_and_bad_round_override(tmp_path):
    out = fedsim("run", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "no such scenario file" in out.stderr and "Traceback" not in out.stderr
    out = fedsim("run", "scenarios/quickstart.yaml", "--rounds", "0")
    assert out.returncode == 2 and "rounds must be a number >= 1. Got 0." in out.stderr


def test_gossip_scenarios_validate_and_refuse_a_round_override():
    out = fedsim("validate", "scenarios/gossip-digits.yaml")
    assert out.returncode == 0 and "gossip-digits: 1000 ticks, 50 nodes" in out.stdout
    out = fedsim("run", "scenarios/gossip-digits.yaml", "--rounds", "3")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "fedsim: error: --rounds must be left out for a gossip scenario (its length is gossip.ticks). Got 3."
    ]
