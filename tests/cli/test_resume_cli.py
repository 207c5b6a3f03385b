"""``fedsim run --resume`` through the command: what it refuses (one line, exit 2), a finished run, a stopped run
continued to the end."""

from __future__ import annotations

import io
import json

import torch
import yaml
from cli_helpers import fedsim_cli

TINY = {
    "name": "resume-cli",
    "seed": 1,
    "rounds": 4,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 8},
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "strategy": {"name": "fedavg", "clients_per_round": 4},
    "engine": {"backend": "inprocess"},
    "output": {"checkpoint_every": 1},
}


def finished_run(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(TINY))
    done = fedsim_cli("run", str(path), "--output", str(tmp_path / "runs"), "--quiet")
    assert done.code == 0, done.err
    return path, next((tmp_path / "runs" / "resume-cli").iterdir())


def test_run_needs_a_scenario_or_resume():
    got = fedsim_cli("run")
    assert got.code == 2 and got.err_lines == [
        "fedsim: error: SCENARIO must be a scenario file, or --resume RUN_DIR to continue a stopped run."
    ]


def test_resume_refuses_overrides_and_folders_that_are_not_runs_in_one_line(tmp_path):
    _, run_dir = finished_run(tmp_path)
    for option in (["--rounds", "3"], ["--no-privacy"], ["--output", str(tmp_path)]):
        got = fedsim_cli("run", "--resume", str(run_dir), *option)
        assert got.code == 2 and len(got.err_lines) == 1, got.err
        assert got.err_lines[0].startswith(f"fedsim: error: {option[0]} must be left out with --resume")
    got = fedsim_cli("run", "--resume", str(tmp_path))
    assert got.code == 2 and got.err_lines == [
        f"fedsim: error: --resume must be a results folder of `fedsim run` (holding scenario.yaml). Got '{tmp_path}'."
    ]


def test_a_finished_run_says_so_and_a_stopped_one_continues_to_the_end(tmp_path):
    path, run_dir = finished_run(tmp_path)
    rows = (run_dir / "metrics.jsonl").read_text()
    model = (run_dir / "model.pt").read_bytes()
    got = fedsim_cli("run", "--resume", str(run_dir))
    assert got.code == 0 and "finished at step 4: nothing to resume" in got.out
    assert (run_dir / "metrics.jsonl").read_text() == rows  # nothing changed

    # make it a run stopped after round 2: its last checkpoints and the rows after them gone
    for n in (3, 4):
        (run_dir / "checkpoints" / f"round-{n}.pt").unlink()
    (run_dir / "model.pt").unlink()
    (run_dir / "metrics.jsonl").write_text("".join(rows.splitlines(keepends=True)[:3]))  # round 3 left behind
    got = fedsim_cli("run", "--resume", str(run_dir), "--quiet")
    assert got.code == 0, got.err
    assert without_wall_clock((run_dir / "metrics.jsonl").read_text()) == without_wall_clock(rows)
    assert got.out.strip().endswith(f"results={run_dir}")
    a, b = torch.load(run_dir / "model.pt"), torch.load(io.BytesIO(model))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_wall_clock(text: str) -> list[dict]:
    return [
        {
            k: v
            for k, v in json.loads(line).items()
            if k not in ("wall_time_s", "round_wall_s") and not k.startswith("time_")
        }
        for line in text.splitlines()
    ]
