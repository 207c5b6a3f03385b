"""Stopping a run at a safe point: Ctrl-C, SIGTERM and SIGHUP ask; the run driver answers.

Why this module exists: a signal that raises ``KeyboardInterrupt`` wherever the main thread happens to be (inside
Ray, a pull, a torch kernel) leaves half-written state, tracebacks and orphaned workers behind. Instead the
first signal only sets a :class:`StopRequest`; the driver looks at it between steps and while it waits for
workers, writes a checkpoint and raises :class:`RunStopped`, which the CLI turns into one line with the resume
command. A second signal means the user insists: it raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that ask a run to stop (SIGKILL cannot be handled: a checkpoint from before it is resumed)."""


class StopRequest:
    """Whether (and by which signal) the run was asked to stop. Thread-safe: read by the driver's thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def set(self, signal_name: str) -> None:
        self.signal_name = self.signal_name or signal_name
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


class RunStopped(Exception):
    """The run stopped at a safe point on request; ``checkpoint`` is what ``fedsim run --resume`` continues
    from (None when the run stopped before its first step)."""

    def __init__(self, signal_name: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by {signal_name} after step {step}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process its signal ended."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


@contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM/SIGHUP set ``request`` (a second one raises ``KeyboardInterrupt``).

    Outside the main thread (where Python cannot install handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request:
            raise KeyboardInterrupt
        request.set(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
