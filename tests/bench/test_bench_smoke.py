"""The benchmark scripts run (tiny sizes, in-process arms only): a broken bench is caught before anyone times it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "bench" / args[0]), *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)


def test_engine_vs_flower_floor_arm_on_both_workloads(tmp_path):
    out = tmp_path / "r.json"
    common = ["--population", "40", "--reps", "1", "--skip", "fedsim", "flower"]
    # the GPU shape (a 1.6 M-parameter CNN on 3x32x32) runs on the CPU here: 2 clients keep it to seconds
    for workload, cohort in ((["--workload", "cpu"], "8"), (["--workload", "gpu", "--device", "cpu"], "2")):
        proc = bench("engine_vs_flower.py", *workload, *common, "--clients-per-round", cohort, "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        floor = json.loads(out.read_text())["runs"][0]["floor"]
        assert floor["vectorized_s"] > 0 and floor["sequential_s"] > 0
        assert f"| {cohort} | - | - |" in proc.stdout  # the table row, with the skipped arms shown as "-"


def test_chunk_size_sweep():
    proc = bench("chunk_size.py", "--clients", "12", "--population", "40", "--budgets-mb", "1", "--reps", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| unlimited | 12 |" in proc.stdout and "| 1 |" in proc.stdout


def test_optimizer_benchmark_runs_and_8bit_adam_shows_about_two_bytes_per_param():
    proc = bench("optimizers.py", "--steps", "3", "--reps", "1", "--only", "adam", "adam8bit")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")
        for line in proc.stdout.splitlines()
        if line.startswith("| ")
    }
    assert float(rows["adam"][7]) == 8.0  # fp32: two moments of 4 bytes
    assert 2.0 < float(rows["adam8bit"][7]) < 2.1  # 8-bit: 2 codes + 4-byte absmax per 256-block


def test_every_shipped_scenario_validates():
    from fedsim.engine.preflight import check_before_run
    from fedsim.scenario.load import load_scenario

    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        check_before_run(load_scenario(path))


def test_engine_vs_pfl_floor_arm_and_pfl_skipped_or_run(tmp_path):
    out = tmp_path / "r.json"
    args = ["--population", "40", "--clients-per-round", "8", "--rounds", "2", "--skip", "fedsim", "pfl-dist"]
    proc = bench("engine_vs_pfl.py", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["floor"]["flops"] == 8 * 4 * (2 * 8 * (784 * 64 + 64 * 10) * 3 - 2 * 8 * 784 * 64)
    assert result["floor"]["s_per_round"] > 0
    if result["env"]["pfl"] is None:  # pfl is optional: one line says it was skipped
        assert "pfl: skipped, pfl is not installed" in proc.stdout
    else:
        assert result["pfl"]["s_per_round"] > 0 and result["pfl"]["processes"] == 1
    assert "| FLOP floor |" in proc.stdout


def test_population_scale_repeats_warm_runs_and_reports_their_median():
    proc = bench("population_scale.py", "--dataset", "regression", "--clients", "200", "--repeat", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row[10:28].strip(): row for row in proc.stdout.splitlines() if row.startswith("      200 ")}
    assert list(rows) == ["client", "population, cold", "population, warm"], proc.stdout
    assert "runs:" not in rows["population, cold"]  # a cold cache is cold once: one run
    for label in ("client", "population, warm"):
        startup = float(rows[label][28:].split()[1])
        listed = sorted(float(x) for x in rows[label].split("start-up of the 3 runs:")[1].split())
        assert len(listed) == 3 and startup == listed[1]  # the median of the three runs listed
