"""Importing modules in a thread, while the caller's thread waits on something else.

A Ray run's driver needs Flower's simulation package (slow to import: it loads Flower's SuperLink state) and
fedsim's worker module only once Ray is up, and ``ray.init`` spends most of its seconds waiting for Ray's processes:
:class:`BackgroundImport` overlaps the two."""

from __future__ import annotations

import importlib
import threading


class BackgroundImport:
    """Imports ``modules``, in order, in a daemon thread started at once; :meth:`join` waits for them and raises
    in the caller's thread what an import raised.

    Import a module the caller's thread also needs during the wait (``ray`` for ``ray.init``) before starting
    this, so that the two threads do not wait on each other's half-imported module."""

    def __init__(self, *modules: str) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._load, args=modules, name="fedsim-import", daemon=True)
        self.thread.start()

    def _load(self, *modules: str) -> None:
        try:
            for module in modules:
                importlib.import_module(module)
        except BaseException as exc:  # raised again by join, in the caller's thread
            self.error = exc

    def join(self) -> None:
        """Wait until every module is imported; raise what an import raised."""
        self.thread.join()
        if self.error is not None:
            raise self.error
