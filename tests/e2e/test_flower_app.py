"""The repository is also a Flower App: ``flwr run .`` runs a scenario in Flower's own runtime.

Starts Flower's managed local SuperLink (simulation mode) in a private FLWR_HOME, runs the small scenario, and
stops every process of that SuperLink afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _processes_with_env(key: str, value: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{key}={value}".encode() in env:
            pids.append(int(proc.name))
    return pids


def test_flwr_run_dot_runs_the_scenario(tmp_path):
    flwr = Path(sys.executable).parent / "flwr"
    home, out_dir = tmp_path / "flwr-home", tmp_path / "runs"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        # Use this environment as it is; otherwise Flower 1.42 `uv sync`s the app's dependencies into a new one.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{flwr.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    config = f'scenario="tests/e2e/small.yaml" output-dir="{out_dir}"'
    try:
        out = subprocess.run(
            [str(flwr), "run", ".", "--stream", "--run-config", config],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for pid in _processes_with_env("FLWR_HOME", str(home)):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "fedsim: done: rounds=3 test_accuracy=" in out.stdout + out.stderr
    (run_dir,) = list((out_dir / "e2e-small").iterdir())
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["clients"] == 8 and r["dropped"] == 0 for r in rows)
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"], [r["test_accuracy"] for r in rows]
    for name in ("scenario.yaml", "report.md", "model.pt", "plots/metrics.png", "checkpoints/round-3.pt"):
        assert (run_dir / name).is_file(), name
    assert "plots/metrics.png" in (run_dir / "report.md").read_text()
