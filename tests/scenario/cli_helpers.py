"""Run the ``fedsim`` console entry point in this process and capture what a user sees."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass

from fedsim.cli import main


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


def assert_one_line_user_error(outcome: Outcome, *must_contain: str) -> None:
    """Exit code 2, exactly one line on stderr starting ``fedsim: error:``, no traceback."""
    assert outcome.code == 2, outcome
    assert len(outcome.err_lines) == 1, outcome.err
    line = outcome.err_lines[0]
    assert line.startswith("fedsim: error: "), line
    assert "Traceback" not in outcome.err and "internal error" not in line, line
    for text in must_contain:
        assert text in line, line
