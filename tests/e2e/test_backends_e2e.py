"""``engine.backend: ray`` and ``engine.backend: inprocess`` give the same run: the same Engine, ClientApp and
messages, through Flower's Ray simulation or the in-process Grid.

One Ray start (~10-20 s on 2 cores): the sync FedAvg family with client-level DP and a deterministic noise seed,
2 workers on both backends (the same sharding); the Ray run is also this family's end-to-end check of what a DP
run writes. The other families are compared Ray-free in
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


def run(scenario: dict, tmp: Path, backend: str) -> tuple[str, Path, str]:
    """``fedsim run`` of ``scenario`` with ``engine.backend`` set; returns the progress output, the run folder and
    the closing line."""
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
    last = out.stdout.strip().splitlines()[-1]
    return out.stderr, Path(last.split("results=")[1]), last


def rows(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK and not k.startswith("time_")}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def assert_a_dp_run_writes_what_it_spent(run_dir: Path, last: str) -> None:
    """ε per row, rising; the adaptive clip moved by the server; privacy.json/md, the ε plot, the report line."""
    assert "epsilon_rdp=" in last and "epsilon_pld=" in last
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eps = [r["epsilon_rdp"] for r in rows]
    assert len(eps) == 3 and eps[0] < eps[1] < eps[2]
    assert all(r["clients"] == r["selected"] > 0 and r["dropped"] == 0 for r in rows)  # Poisson cohorts
    clips = [r["dp_clip"] for r in rows]
    assert clips[0] == 0.5 and clips[1] != 0.5  # adaptive: the server moved the bound between rounds
    assert all(0.0 <= r["dp_clipped_fraction"] <= 1.0 and r["dp_norm_p50"] > 0 for r in rows)
    rec = json.loads((run_dir / "privacy.json").read_text())
    assert rec["source"] == "run" and rec["rounds_run"] == 3 and rec["per_layer"] == "adaptive"
    assert rec["epsilon"]["rdp"] == pytest.approx(eps[-1]) and set(rec["epsilon"]) == {"rdp", "pld"}
    assert rec["measured_clipping"]["rounds"] == 3
    md = (run_dir / "privacy.md").read_text()
    assert "Measured clipping (this run)" in md and "NOT PRIVATE" in md  # insecure_seed: said in the report
    assert (run_dir / "plots" / "privacy_epsilon.png").is_file()
    assert "privacy: client-level DP" in (run_dir / "report.md").read_text()
    for name in ("scenario.yaml", "model.pt", "plots/metrics.png", "checkpoints/round-3.pt"):
        assert (run_dir / name).is_file(), name


def test_ray_and_inprocess_backends_give_the_same_metrics_and_model(tmp_path):
    scenario = yaml.safe_load((ROOT / "tests" / "e2e" / "small-dp.yaml").read_text())
    scenario["privacy"] = {**scenario.get("privacy", {}), "insecure_seed": True}  # the same noise on both
    ray_log, ray_dir, out_of_ray = run(scenario, tmp_path, "ray")
    local_log, local_dir, _ = run(scenario, tmp_path, "inprocess")
    assert ray_log.startswith("starting 2 ray workers (engine.backend: ray)")
    assert local_log.startswith("starting 2 inprocess workers (engine.backend: inprocess)")
    assert "(raylet)" not in ray_log and "retries remaining" not in ray_log  # Ray's shutdown says nothing
    a, b = rows(ray_dir), rows(local_dir)
    assert len(a) == scenario["rounds"] and a == b
    assert_a_dp_run_writes_what_it_spent(ray_dir, out_of_ray)
    ray_model = torch.load(ray_dir / "model.pt")
    local_model = torch.load(local_dir / "model.pt")
    assert ray_model.keys() == local_model.keys()
    for k in ray_model:
        assert torch.equal(ray_model[k], local_model[k]), k
