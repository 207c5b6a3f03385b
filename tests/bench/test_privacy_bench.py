"""``bench/privacy_cli.py`` runs (tiny sizes) and prints its table: a broken bench is caught before anyone times it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_privacy_cli_bench_prints_wall_cpu_and_load():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "privacy_cli.py"),
            "--clients",
            "100",
            "--rounds",
            "20",
            "--reps",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| 1 |"))
    wall, cpu, load = (float(x) for x in row.strip("|").split("|")[1:4])
    assert wall > 0 and cpu > 0 and load >= 0
    assert "epsilon_rdp=" in proc.stdout
