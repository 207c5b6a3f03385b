"""``fedsim compare``: run folders on one virtual-time axis (table numbers checked by hand) and bad input."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


fedsim = run_cli  # in process: see tests/cli_helpers.py


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


def test_a_missing_item_names_the_argument_and_what_it_must_be(tmp_path):
    a = fake_run(tmp_path / "sync" / "t1", [0.1, 0.3], dt=1.0)
    missing = tmp_path / "runs" / "gone"
    out = fedsim("compare", str(a), str(missing), "-o", str(tmp_path / "cmp"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"fedsim: error: compare argument 2 ({missing}) must be a scenario file or a run folder (with "
        "metrics.jsonl); there is no such file or folder."
    ]
    assert not (tmp_path / "cmp").exists()  # nothing run or written before the check


def test_regression_and_gossip_runs_are_compared_on_what_their_rows_have(tmp_path):
    from fedsim.compare import load_run, table

    reg = tmp_path / "dp_gd" / "t1"
    reg.mkdir(parents=True)
    rows = [
        {"round": i, "virtual_time_s": float(i), "clients": 4, "test_loss": 1.0 / i} for i in (1, 2, 3, 4)
    ]
    (reg / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gsp = tmp_path / "gossip" / "t1"
    gsp.mkdir(parents=True)
    rows = [
        {
            "round": e,
            "tick": 30 * e,
            "virtual_time_s": 30.0 * e,
            "test_accuracy": 0.2 * e,
            "test_loss": 2.0 - e,
        }
        for e in (0, 1, 2)  # tick 0 is evaluated too
    ]
    (gsp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = table([load_run(reg), load_run(gsp)])
    reg_row, gsp_row = (line.split(" | ") for line in md.splitlines()[2:])
    assert reg_row[1:3] == ["4", "4.000"] and reg_row[-1].rstrip(" |") == "0.250"  # final loss 1/4
    assert gsp_row[1:4] == ["60 ticks", "60.000", "0.400"]
