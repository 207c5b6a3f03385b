"""Settings every test shares."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _own_data_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests build their data into a cache folder of this session (``FEDSIM_CACHE_DIR``, inherited by the
    subprocesses and Ray workers they start), not into the machine's shared one, where data built by older code
    could be read back; a ``FEDSIM_CACHE_DIR`` already set in the environment is kept."""
    if os.environ.get("FEDSIM_CACHE_DIR"):
        yield
        return
    os.environ["FEDSIM_CACHE_DIR"] = str(tmp_path_factory.mktemp("fedsim-cache"))
    try:
        yield
    finally:
        os.environ.pop("FEDSIM_CACHE_DIR", None)
