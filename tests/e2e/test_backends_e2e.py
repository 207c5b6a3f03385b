"""``engine.backend: ray`` and ``engine.backend: inprocess`` give the same run: the same Engine, ClientApp and
messages, through Flower's Ray simulation or the in-process Grid.

One Ray start (~10-20 s on 2 cores): the sync FedAvg family with client-level DP and a deterministic noise seed,
2 workers on both backends (the same sharding). The other families are compared Ray-free in
tests/engine/test_backends.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]

WALL_CLOCK = ("wall_time_s", "round_wall_s")


def run(scenario: dict, tmp: Path, backend: str) -> tuple[str, Path]:
    """``fedsim run`` of ``scenario`` with ``engine.backend`` set; returns the progress output and the run folder."""
    sc = {**scenario, "engine": {**scenario.get("engine", {}), "backend": backend}}
    path = tmp / f"{backend}.yaml"
    path.write_text(yaml.safe_dump(sc))
    out = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", str(path), "--output", str(tmp / backend)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr, Path(out.stdout.strip().splitlines()[-1].split("results=")[1])


def rows(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK and not k.startswith("time_")}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_ray_and_inprocess_backends_give_the_same_metrics_and_model(tmp_path):
    scenario = yaml.safe_load((ROOT / "tests" / "e2e" / "small-dp.yaml").read_text())
    scenario["privacy"] = {**scenario.get("privacy", {}), "insecure_seed": True}  # the same noise on both
    ray_log, ray_dir = run(scenario, tmp_path, "ray")
    local_log, local_dir = run(scenario, tmp_path, "inprocess")
    assert ray_log.startswith("starting 2 ray workers (engine.backend: ray)")
    assert local_log.startswith("starting 2 inprocess workers (engine.backend: inprocess)")
    a, b = rows(ray_dir), rows(local_dir)
    assert len(a) == scenario["rounds"] and a == b
    ray_model = torch.load(ray_dir / "model.pt")
    local_model = torch.load(local_dir / "model.pt")
    assert ray_model.keys() == local_model.keys()
    for k in ray_model:
        assert torch.equal(ray_model[k], local_model[k]), k
