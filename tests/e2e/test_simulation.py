"""End to end through Flower's Ray simulation: the CLI runs a small scenario and writes the results folder.

These start Ray (15-20 s each), so there are few of them: here gossip (node models kept on the Ray workers);
the FedAvg family with client-level DP in test_backends_e2e.py, DIFF2 in test_diff2_e2e.py, ``flwr run .`` in
test_flower_app.py.
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


def test_fedsim_run_of_a_gossip_scenario_keeps_node_models_on_the_ray_workers(tmp_path):
    """The node shards live in the workers' Flower contexts between messages, on Ray as on the in-process grid:
    the run through Ray equals the in-process run of the same scenario."""
    import numpy as np

    from fedsim.engine.gossip_network import build_shard
    from fedsim.engine.setup import build_data, build_initial_model
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
