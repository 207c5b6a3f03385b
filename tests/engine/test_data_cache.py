"""The data cache's key: it covers the code that makes the data, and tests keep their own cache folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedsim.engine import data_cache
from fedsim.scenario import parse_scenario

SCENARIO = parse_scenario(
    {"name": "key", "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}}}
)


def test_a_change_to_the_data_code_changes_the_key(monkeypatch):
    before = data_cache.data_key(SCENARIO)
    monkeypatch.setattr(
        data_cache, "code_fingerprint", lambda: "code after an edit to a partitioner", raising=False
    )
    assert data_cache.data_key(SCENARIO) != before


def test_the_fingerprint_follows_every_byte_of_the_sources(tmp_path):
    files = [tmp_path / "synthetic.py", tmp_path / "partitioners.py"]
    for f in files:
        f.write_text("def make():\n    return 1\n")
    before = data_cache.fingerprint_files(files)
    assert data_cache.fingerprint_files(files) == before  # a pure function of the contents
    files[1].write_text("def make():\n    return 2\n")
    assert data_cache.fingerprint_files(files) != before


def test_the_sources_are_the_data_package_the_glue_and_the_cache_itself():
    names = {
        p.relative_to(Path(data_cache.__file__).parents[2]).as_posix() for p in data_cache.data_sources()
    }
    assert {"fedsim/data/partitioners.py", "fedsim/data/synthetic.py", "fedsim/engine/data_cache.py"} <= names
    assert "fedsim/engine/setup.py" in names  # load_data: the scenario's data block to the loaders


def test_tests_do_not_use_the_machines_shared_cache():
    """tests/conftest.py points FEDSIM_CACHE_DIR at a folder of the session unless the environment set one."""
    assert os.environ.get("FEDSIM_CACHE_DIR")
    assert data_cache.cache_root() != Path(tempfile.gettempdir()) / f"fedsim-cache-{os.getuid()}"
