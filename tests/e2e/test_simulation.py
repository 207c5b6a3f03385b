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


def test_fedsim_run_three_rounds_through_flower_and_ray(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "tests/e2e/small.yaml", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
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
