"""End to end through Flower's Ray simulation: the CLI runs a small scenario and writes the results folder.

These start Ray (15-20 s each), so there are few of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def fedsim_run(scenario: str, output: Path) -> str:
    """``fedsim run`` in a subprocess; returns its last line (the summary), after checking it succeeded."""
    out = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", scenario, "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_fedsim_run_three_rounds_through_flower_and_ray(tmp_path):
    last = fedsim_run("tests/e2e/small.yaml", tmp_path)
    assert "test_accuracy=" in last and "results=" in last
    run_dir = Path(last.split("results=")[1])
    assert run_dir.parent == tmp_path / "e2e-small"
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["clients"] == 8 and r["dropped"] == 0 for r in rows)
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"], [r["test_accuracy"] for r in rows]
    for name in ("scenario.yaml", "report.md", "model.pt", "plots/metrics.png", "checkpoints/round-3.pt"):
        assert (run_dir / name).is_file(), name
    assert "plots/metrics.png" in (run_dir / "report.md").read_text()


def test_fedsim_run_of_a_dp_scenario_writes_what_it_spent(tmp_path):
    last = fedsim_run("tests/e2e/small-dp.yaml", tmp_path)
    assert "epsilon_rdp=" in last and "epsilon_pld=" in last
    run_dir = Path(last.split("results=")[1])
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eps = [r["epsilon_rdp"] for r in rows]
    assert len(eps) == 3 and eps[0] < eps[1] < eps[2]
    clips = [r["dp_clip"] for r in rows]
    assert clips[0] == 0.5 and clips[1] != 0.5  # adaptive: the server moved the bound between rounds
    assert all(0.0 <= r["dp_clipped_fraction"] <= 1.0 and r["dp_norm_p50"] > 0 for r in rows)
    rec = json.loads((run_dir / "privacy.json").read_text())
    assert rec["source"] == "run" and rec["rounds_run"] == 3 and rec["per_layer"] == "adaptive"
    assert rec["epsilon"]["rdp"] == pytest.approx(eps[-1]) and set(rec["epsilon"]) == {"rdp", "pld"}
    assert rec["measured_clipping"]["rounds"] == 3
    md = (run_dir / "privacy.md").read_text()
    assert "Measured clipping (this run)" in md and "NOT PRIVATE" not in md
    assert (run_dir / "plots" / "privacy_epsilon.png").is_file()
    assert "privacy: client-level DP" in (run_dir / "report.md").read_text()


def test_fedsim_run_of_a_gossip_scenario_keeps_node_models_on_the_ray_workers(tmp_path):
    """The node shards live in the workers' Flower contexts between messages, on Ray as on the in-process grid:
    the run through Ray equals the in-process run of the same scenario."""
    import numpy as np

    from fedsim.engine.setup import build_data, build_initial_model
    from fedsim.gossip.network import build_shard
    from fedsim.gossip.supersteps import run_in_process
    from fedsim.scenario.load import load_scenario

    last = fedsim_run("tests/e2e/small-gossip.yaml", tmp_path)
    assert last.startswith("done: ticks=60 evaluations=3 test_accuracy=")
    assert "test_accuracy_avg_model=" in last
    run_dir = Path(last.split("results=")[1])
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["tick"] for r in rows] == [0, 30, 60] and rows[-1]["models_across_workers"] > 0
    for name in ("report.md", "model.pt", "plots/metrics.png", "checkpoints/round-2.pt"):
        assert (run_dir / name).is_file(), name
    report = (run_dir / "report.md").read_text()
    assert "| ticks | 60 of 60 |" in report
    assert "| evaluations (tick 0, every 30 ticks, the last tick) | 3 of 3 |" in report
    assert f"| node trainings / failed | {rows[-1]['trained']} / 0 |" in report

    sc = load_scenario(ROOT / "tests/e2e/small-gossip.yaml")
    data = build_data(sc)
    shard = build_shard(sc, data, build_initial_model(sc, data), np.arange(12))
    merges = []
    run_in_process([shard], np.zeros(12, dtype=np.int64), horizon=60, eval_every=30,
                   on_eval=lambda tick, reports: merges.append(reports[0].counts["merges"]))  # fmt: skip
    assert [r["merges"] for r in rows] == merges and merges[-1] > 0
