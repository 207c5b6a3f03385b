"""The watchdog of fedsim.engine.ray_guard, without Ray: stand-in processes play the run's Ray cluster.

When the driver is killed, the watchdog kills exactly the run's processes (its token in their environment, or a
file open in its temp dir) and removes the temp dir; when the driver says it is done, the watchdog kills
nothing. (tests/e2e/test_ray_signals.py checks the same with a real Ray cluster.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from fedsim.engine import ray_guard

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc")

DRIVER = """
import os, subprocess, sys, tempfile, time
from fedsim.engine import ray_guard as g
token = g.run_token()
tmp = tempfile.mkdtemp(prefix="fedsim-ray-test-")
watchdog = g.start_watchdog(token, tmp)
tagged = subprocess.Popen(["sleep", "120"], env={**os.environ, g.MARKER: token})
in_dir = subprocess.Popen(["sleep", "120"], cwd=tmp)  # no token (as Ray's agents), but works in the temp dir
other = subprocess.Popen(["sleep", "120"])  # not the run's
print(watchdog.pid, tagged.pid, in_dir.pid, other.pid, tmp, flush=True)
time.sleep(120)
"""


def running(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2] != "Z"


def test_when_the_driver_is_killed_the_watchdog_kills_the_runs_processes_only():
    driver = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DRIVER)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert driver.stdout is not None
    watchdog, tagged, in_dir, other, tmp = driver.stdout.readline().split()
    try:
        assert all(running(int(p)) for p in (watchdog, tagged, in_dir, other))
        assert set(ray_guard.run_processes("not-the-token", tmp)) == {int(in_dir)}  # by its dir alone
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
            running(int(tagged)) or running(int(in_dir)) or os.path.exists(tmp)
        ):
            time.sleep(0.05)
        assert not running(int(tagged)) and not running(int(in_dir)) and not os.path.exists(tmp)
        assert running(int(other))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and running(int(watchdog)):
            time.sleep(0.05)
        assert not running(int(watchdog))
    finally:
        for pid in (tagged, in_dir, other, watchdog):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_when_the_driver_is_done_the_watchdog_exits_and_kills_nothing():
    token = ray_guard.run_token()
    tmp = tempfile.mkdtemp(prefix="fedsim-ray-test-")
    tagged = subprocess.Popen(["sleep", "120"], env={**os.environ, ray_guard.MARKER: token})
    try:
        watchdog = ray_guard.start_watchdog(token, tmp)
        assert watchdog is not None
        assert ray_guard.run_processes(token, tmp) == [tagged.pid]
        ray_guard.stop_watchdog(watchdog)
        assert watchdog.returncode == 0
        assert tagged.poll() is None and os.path.isdir(tmp)
        assert ray_guard.kill_run(token, tmp) == [tagged.pid]
        assert tagged.wait(timeout=5) == -signal.SIGKILL
    finally:
        tagged.kill()
        os.rmdir(tmp)
