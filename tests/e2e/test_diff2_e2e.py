"""``fedsim run`` of the DIFF2 scenario through Flower's Ray simulation: workers keep x_{r−2} in their node state
between rounds, and the run writes its metrics and the privacy report of what it spent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_fedsim_run_of_the_diff2_scenario(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "scenarios/diff2-diabetes.yaml", "--rounds", "6", "--output",
         str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert "test_loss=" in last and "epsilon_rdp=" in last
    run_dir = Path(last.split("results=")[1])
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == [
        "restart",
        "difference",
        "difference",
        "difference",
        "restart",
        "difference",
    ]
    # privacy.release_diagnostics is off: counts, train loss and clipping fractions are withheld
    assert not any(
        k in r for r in rows for k in ("clients", "dropped", "train_loss", "clip_fraction", "grad_norm")
    )
    assert all(r["radius"] > 0 and r["test_loss"] > 0 for r in rows)
    eps = [r["epsilon_rdp"] for r in rows]
    assert eps == sorted(eps)
    rec = json.loads((run_dir / "privacy.json").read_text())
    assert (
        rec["source"] == "run"
        and rec["strategy"] == "diff2"
        and rec["epsilon"]["rdp"] == pytest.approx(eps[-1])
    )
    assert "measured_clipping" not in rec and rec["released_diagnostics"] == []
