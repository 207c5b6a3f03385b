"""Run the ``fedsim`` console entry point in this process and capture what a user sees.

In process, a command costs what it does, not a Python start and fedsim's imports (2-3 s each on a 2-core CI
machine). Tests that check what a fresh process imports, or how it ends on a signal, start one instead.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fedsim.cli import main

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


def fedsim_cli(*args: str) -> Outcome:
    """``fedsim ARGS`` through ``fedsim.cli.main`` (the console script), exit code and both streams captured."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["fedsim", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return Outcome(code, out.getvalue(), err.getvalue())


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``fedsim ARGS`` in process, run from ``cwd`` (the repository root), reported as
    ``subprocess.run(..., capture_output=True, text=True)`` would: ``returncode``, ``stdout``, ``stderr``."""
    with contextlib.chdir(cwd):
        outcome = fedsim_cli(*args)
    return subprocess.CompletedProcess(["fedsim", *args], outcome.code, outcome.out, outcome.err)


def assert_one_line_user_error(outcome: Outcome, *must_contain: str) -> None:
    """Exit code 2, exactly one line on stderr starting ``fedsim: error:``, no traceback."""
    assert outcome.code == 2, outcome
    assert len(outcome.err_lines) == 1, outcome.err
    line = outcome.err_lines[0]
    assert line.startswith("fedsim: error: "), line
    assert "Traceback" not in outcome.err and "internal error" not in line, line
    for text in must_contain:
        assert text in line, line
