"""Signals and a Ray run, end to end: Ctrl-C while Ray starts ends ``fedsim run`` in seconds with one line;
Ctrl-C mid-run stops at a checkpoint and ``kill -9`` of ``fedsim run`` mid-run leaves no process of its Ray
cluster behind; the run resumed from its checkpoints ends as an uninterrupted run does.

The run's processes are found here without fedsim's own bookkeeping: the driver's process tree just before the
signal (gcs_server, raylet, agents, workers), plus any process whose environment names the driver's pid in
``FEDSIM_RAY_RUN`` (fedsim.engine.ray_guard), each identified by pid and start time.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="/proc")]

GONE_WITHIN_S = 5.0


def stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def alive(procs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The (pid, start time) pairs still running (zombies count as gone)."""
    out = set()
    for pid, start in procs:
        s = stat(pid)
        if s is not None and s[2] == start and s[1] != "Z":
            out.add((pid, start))
    return out


def tree(root: int) -> dict[tuple[int, int], str]:
    """The live descendants of ``root``: (pid, start time) -> command line."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (s := stat(int(name))) is not None and s[1] != "Z":
            table[int(name)] = s
    found: dict[tuple[int, int], str] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, start) in table.items():
            if ppid == parent and (pid, start) not in found:
                try:
                    cmd = (
                        Path(f"/proc/{pid}/cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode(errors="replace")
                    )
                except OSError:
                    continue
                found[(pid, start)] = cmd
                todo.append(pid)
    return found


def tagged(driver: int) -> set[tuple[int, int]]:
    """Processes whose environment carries the run token of ``driver`` (``FEDSIM_RAY_RUN=<pid>-...``)."""
    needle = f"\0FEDSIM_RAY_RUN={driver}-".encode()
    out = set()
    for name in os.listdir("/proc"):
        try:
            env = b"\0" + Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if needle in env and (s := stat(int(name))) is not None and s[1] != "Z":
            out.add((int(name), s[2]))
    return out


def start_run(tmp_path: Path, rounds: int, *args: str, tag: str = "") -> tuple[subprocess.Popen[str], Path]:
    """``fedsim run`` of the small e2e scenario on Ray (checkpoints after every round), as a terminal's
    foreground job (its own process group); stderr goes to a file the test reads while it runs. ``args``: the
    command's arguments instead of the scenario's (``--resume DIR``)."""
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(ray_scenario(rounds)))
    err = tmp_path / f"stderr{tag}.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "run",
            *(args or (str(path), "--output", str(tmp_path / "runs"))),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=err.open("w"),
        text=True,
        start_new_session=True,
    )
    return proc, err


def ray_scenario(rounds: int) -> dict:
    sc = yaml.safe_load((ROOT / "tests" / "e2e" / "small.yaml").read_text())
    sc["rounds"] = rounds
    sc["engine"] = {**sc["engine"], "backend": "ray"}
    sc["output"] = {"checkpoint_every": 1}
    return sc


def rows_in(tmp_path: Path) -> int:
    found = list((tmp_path / "runs").glob("*/*/metrics.jsonl"))
    return len(found[0].read_text().splitlines()) if found else 0


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen[str], err: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := condition():
            return got
        if proc.poll() is not None:
            pytest.fail(f"fedsim run ended (rc {proc.returncode}) before {what}: {err.read_text()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {what} within {timeout} s: {err.read_text()[-2000:]}")


def ray_processes(driver: int) -> dict[tuple[int, int], str]:
    """The driver's descendants but its watchdog (which must outlive it)."""
    return {k: cmd for k, cmd in tree(driver).items() if "fedsim.engine.ray_guard" not in cmd}


def assert_all_gone(driver: int, before: dict[tuple[int, int], str]) -> float:
    """Wait until no process of the run is left; returns how long that took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < GONE_WITHIN_S:
        left = alive(set(before)) | tagged(driver)
        if not left and not glob.glob(f"/tmp/fedsim-ray-{driver}-*"):
            return time.monotonic() - t0
        time.sleep(0.05)
    names = {k: before.get(k, "?")[:80] for k in alive(set(before)) | tagged(driver)}
    pytest.fail(
        f"still alive {GONE_WITHIN_S} s later: {names}; temp dirs {glob.glob(f'/tmp/fedsim-ray-{driver}-*')}"
    )


def test_ctrl_c_while_ray_starts_ends_the_run_in_seconds_with_one_line_and_nothing_left(tmp_path):
    proc, err = start_run(tmp_path, rounds=3)
    wait_for(
        lambda: any("gcs_server" in cmd for cmd in ray_processes(proc.pid).values()),
        120, "Ray start-up", proc, err,
    )  # fmt: skip
    before = ray_processes(proc.pid)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: the whole foreground process group
    try:
        rc = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 15 s after Ctrl-C: {err.read_text()[-2000:]}")
    took = time.monotonic() - t0
    assert_all_gone(proc.pid, before)
    text = err.read_text()
    assert rc == 130, text[-2000:]
    said = [line for line in text.splitlines() if not line.startswith(("starting ", "round "))]
    assert len(said) == 1 and said[0].startswith("fedsim:"), text[-2000:]
    assert "Traceback" not in text
    assert took < 10, f"{took:.1f} s from Ctrl-C to exit"


def test_ctrl_c_a_dead_worker_and_kill_9_mid_run_leave_nothing_and_the_run_ends_as_an_uninterrupted_one(tmp_path):
    """Ctrl-C mid-run: one line with the resume command, a checkpoint, no process left. In the resumed run a
    worker process is killed (Ray restarts it and runs its message again), then the run itself with ``kill -9``:
    no process of its cluster outlives it by more than a few seconds. Resumed again, the run
    ends with the rows and model of an uninterrupted run (the in-process backend with the same workers, which
    gives what Ray gives: tests/e2e/test_backends_e2e.py)."""
    import torch

    from fedsim.engine.simulation import simulate
    from fedsim.results import read_metrics
    from fedsim.scenario import parse_scenario

    rounds = 60
    proc, err = start_run(tmp_path, rounds)
    wait_for(lambda: rows_in(tmp_path) >= 2, 180, "two rounds", proc, err)
    before = ray_processes(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the terminal sends it
    rc = proc.wait(timeout=30)
    assert_all_gone(proc.pid, before)
    text = err.read_text()
    run_dir = next((tmp_path / "runs").glob("*/*"))
    assert rc == 130, text[-2000:]
    assert (
        text.splitlines()[-1].endswith(f"Resume with: fedsim run --resume {run_dir}")
        and "Traceback" not in text
    )
    stopped_at = rows_in(tmp_path)
    assert 2 <= stopped_at < rounds and (run_dir / "checkpoints" / f"round-{stopped_at}.pt").is_file()

    proc, err = start_run(tmp_path, rounds, "--resume", str(run_dir), tag="-resumed")
    wait_for(lambda: rows_in(tmp_path) >= stopped_at + 2, 180, "two more rounds", proc, err)
    actors = [pid for (pid, _), cmd in ray_processes(proc.pid).items() if cmd.startswith("ray::WorkerActor")]
    assert actors, ray_processes(proc.pid)
    os.kill(actors[0], signal.SIGKILL)  # a worker process dies mid-run: Ray restarts it and runs its message again
    killed_at = rows_in(tmp_path)
    wait_for(lambda: rows_in(tmp_path) >= killed_at + 3, 180, "rounds after a worker died", proc, err)
    assert "Traceback" not in err.read_text() and "fedsim: error" not in err.read_text()
    before = ray_processes(proc.pid)
    cmds = " ".join(before.values())
    assert "raylet" in cmds and "gcs_server" in cmds and "ray::" in cmds, cmds  # a Ray run, with workers
    assert tagged(proc.pid), "the run's processes carry its token"
    proc.kill()
    proc.wait()
    assert_all_gone(proc.pid, before)
    assert rows_in(tmp_path) < rounds, "the run ended before kill -9: the test proves nothing"

    done = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "--resume", str(run_dir), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]

    class Keep:
        def __init__(self):
            self.rows = []

        def write_round(self, row):
            self.rows.append(dict(row))

        def save_checkpoint(self, **kw):
            if kw["final"]:
                self.params = kw["params"]

    oracle = Keep()
    sc = ray_scenario(rounds)
    simulate(parse_scenario({**sc, "engine": {**sc["engine"], "backend": "inprocess"}}), oracle)

    def wall(r):
        return {
            k: v
            for k, v in r.items()
            if k not in ("wall_time_s", "round_wall_s") and not k.startswith("time_")
        }

    ours = read_metrics(run_dir / "metrics.jsonl")
    assert [wall(r) for r in ours] == [wall(r) for r in json_rows(oracle.rows)]
    model = torch.load(run_dir / "model.pt")
    assert model.keys() == oracle.params.keys()
    assert all(torch.equal(model[k], oracle.params[k]) for k in model)


def json_rows(rows):
    """Rows as ``metrics.jsonl`` holds them (JSON round trip: tuples become lists, inf becomes null)."""
    import json
    import math

    return [
        json.loads(
            json.dumps(
                {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            )
        )
        for r in rows
    ]
