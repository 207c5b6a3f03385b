"""Processes a deployment starts are all stopped, including helpers that escaped into sessions of their own."""

from __future__ import annotations

import sys
import time

from fedsim.deploy.processes import Processes, marked_processes

# A parent that starts a child in a new session (as Flower starts its SuperExec) and then waits forever.
ESCAPING_PARENT = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
    "print('started', flush=True)\n"
    "time.sleep(600)\n"
)


def test_stop_ends_every_process_and_the_helpers_that_left_the_group(tmp_path):
    procs = Processes(tmp_path, env={"PATH": "/usr/bin:/bin"})
    procs.start("a", [sys.executable, "-c", ESCAPING_PARENT])
    procs.start("b", [sys.executable, "-c", "import time; time.sleep(600)"])
    deadline = time.monotonic() + 30
    while len(marked_processes(procs.token)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(marked_processes(procs.token)) == 3  # parent, its escaped child, and b
    procs.stop(grace_s=2)
    assert marked_processes(procs.token) == []
    assert procs.exited("a") is not None and procs.exited("b") is not None
    procs.stop()  # twice is harmless


def test_a_process_that_failed_is_reported_in_one_line_with_its_telling_log_line(tmp_path):
    procs = Processes(tmp_path, env={"PATH": "/usr/bin:/bin"})
    script = "print('starting'); print('ERROR: [Errno 98] address already in use'); print('bye'); raise SystemExit(3)"
    procs.start("link", [sys.executable, "-c", script])
    procs.procs["link"].wait(timeout=30)
    err = procs.failure("link", "flower-superlink")
    assert str(err).startswith(
        "flower-superlink exited with code 3: ERROR: [Errno 98] address already in use"
    )
    assert str(procs.log("link")) in str(err) and "\n" not in str(err)
