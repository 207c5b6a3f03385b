"""``fedsim compare``: run folders on one virtual-time axis (table numbers checked by hand) and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fedsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def fake_run(folder: Path, accs: list[float], dt: float) -> Path:
    folder.mkdir(parents=True)
    rows = [
        {"round": i + 1, "virtual_time_s": dt * (i + 1), "test_accuracy": a, "test_loss": 2.0 - a}
        for i, a in enumerate(accs)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_compare_two_run_folders(tmp_path):
    a = fake_run(tmp_path / "sync" / "t1", [0.1, 0.3, 0.5, 0.6, 0.62], dt=1.0)
    b = fake_run(tmp_path / "async" / "t1", [0.2, 0.5, 0.4, 0.7, 0.3, 0.6, 0.65, 0.5, 0.66, 0.7], dt=0.5)
    out = fedsim("compare", str(a), str(b), "-o", str(tmp_path / "cmp"), "--title", "t")
    assert out.returncode == 0, out.stderr
    assert "compared 2 runs" in out.stdout
    md = (tmp_path / "cmp" / "compare.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| sync") or line.startswith("| async")]
    sync, asyn = (line.split(" | ") for line in lines)
    assert sync[1:5] == ["5", "5.000", "0.620", "0.620"]  # steps, virtual time, final, best
    assert asyn[1:5] == ["10", "5.000", "0.700", "0.700"]
    assert asyn[5:7] == ["0.680", "0.040"]  # the last fifth (2 evaluations): mean 0.68, spread 0.04
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000


def test_compare_refuses_a_folder_without_metrics(tmp_path):
    (tmp_path / "empty").mkdir()
    out = fedsim("compare", str(tmp_path / "empty"), "-o", str(tmp_path / "cmp"))
    assert out.returncode == 2
    assert "compare must be a run folder with metrics.jsonl" in out.stderr
    assert "Traceback" not in out.stderr
