"""Beyond one machine: a run on an existing Ray cluster of two raylets sizes ``engine.workers: auto`` from the
cluster, places a worker on each raylet, builds the data on each node from that node's own cache, and gives the
in-process result.

The two raylets run on this machine (``bench/local_cluster.py``: ``ray start --head`` and ``ray start
--address=...``, each with its own ports and its own ``FEDSIM_CACHE_DIR``, as two machines would have), and are
stopped by their token, never with a bare ``ray stop``. One CPU each, so ``auto`` means 2 workers only because
the cluster has 2 CPUs (this machine's core count does not enter).
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
sys.path.insert(0, str(ROOT / "bench"))

from local_cluster import local_cluster, query  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

WALL_CLOCK = ("wall_time_s", "round_wall_s")


def start_run(scenario: dict, tmp: Path, name: str) -> subprocess.Popen[str]:
    """``fedsim run`` of ``scenario`` in the background."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", str(path), "--output", str(tmp / name)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[str, Path]:
    """Wait for a run; returns its progress output and its results folder."""
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return err, Path(out.strip().splitlines()[-1].split("results=")[1])


def rows(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK and not k.startswith("time_")}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_workers_auto_on_a_two_raylet_cluster_uses_both_raylets_and_gives_the_inprocess_result(tmp_path):
    scenario = yaml.safe_load((ROOT / "tests" / "e2e" / "small.yaml").read_text())
    caches = [tmp_path / "cache-node-0", tmp_path / "cache-node-1"]
    # the in-process reference runs while the cluster starts (mostly waiting)
    local = start_run({**scenario, "engine": {"workers": 2, "backend": "inprocess"}}, tmp_path, "inprocess")
    try:
        env = [{"FEDSIM_CACHE_DIR": str(c)} for c in caches]
        with local_cluster(2, cpus_per_node=1, node_env=env) as cluster:
            on_cluster = {**scenario, "engine": {"workers": "auto", "ray_address": cluster.address}}
            log, cluster_dir = finish(start_run(on_cluster, tmp_path, "cluster"))
            nodes = query(cluster.address, "nodes()")
            actors = query(cluster.address, "actors('WorkerActor')")
    finally:
        _, local_dir = finish(local)

    assert log.startswith("starting 2 ray workers (auto: engine.ray_address is set)"), log[:500]
    assert f"Ray cluster at {cluster.address}: 2 nodes, 2 CPUs, 0 GPUs; 2 workers of 1 CPU each" in log
    assert len(nodes) == 2 and len(actors) == 2
    assert sorted(node for node, _ in actors) == nodes  # one worker on each raylet
    for cache in caches:  # each node built its own copy of the data, in its own cache (not the driver's)
        assert len(list(cache.glob("*/meta.json"))) == 1, cache

    a, b = rows(cluster_dir), rows(local_dir)
    assert len(a) == scenario["rounds"] and a == b
    cluster_model, local_model = torch.load(cluster_dir / "model.pt"), torch.load(local_dir / "model.pt")
    assert cluster_model.keys() == local_model.keys()
    for k in cluster_model:
        assert torch.equal(cluster_model[k], local_model[k]), k
