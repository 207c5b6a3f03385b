"""Generated malformed scenarios through the CLI entry point: exit 2, one line on stderr, nothing written.

Each example starts from a valid scenario and breaks it one way (a wrong type, a non-finite or negative number,
a bool or a string for a number, an unknown key, a bad nested choice, a huge population, a repeated key in the
raw YAML text, an empty file, a non-mapping). ``fedsim run`` must refuse it before anything starts; the run
itself is replaced by a function that fails the test, so a mutation that left the file valid shows up as an
error instead of a training run.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli_helpers import assert_one_line_user_error, fedsim_cli


def base(out_dir: str) -> dict[str, Any]:
    """A small valid scenario (checked by ``test_the_base_scenario_is_valid``)."""
    return {
        "name": "malformed",
        "seed": 0,
        "rounds": 2,
        "data": {"dataset": "digits", "partitioner": "dirichlet", "partitioner_args": {"alpha": 0.5}},
        "population": {"clients": 20, "devices": {"availability": 1.0, "failure": 0.0}},
        "model": {"name": "mlp", "args": {"hidden": [8]}},
        "client": {"epochs": 1, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.1}},
        "strategy": {"name": "fedavg", "clients_per_round": 5},
        "engine": {"register_timeout_s": 30.0},
        "evaluation": {"every": 1},
        "output": {"dir": out_dir},
    }


# Every field here refuses each value of BAD_NUMBERS (all need a positive or non-negative finite number).
NUMERIC_FIELDS = [
    ("rounds",),
    ("seed",),
    ("population", "clients"),
    ("strategy", "clients_per_round"),
    ("client", "epochs"),
    ("client", "batch_size"),
    ("client", "optimizer", "lr"),
    ("data", "test_fraction"),
    ("data", "partitioner_args", "alpha"),
    ("model", "args", "hidden"),
    ("population", "devices", "failure"),
    ("population", "devices", "availability"),
    ("engine", "register_timeout_s"),
    ("evaluation", "every"),
]
BAD_NUMBERS = [True, False, "7", "abc", math.nan, math.inf, -math.inf, -3, {"a": 1}]
MAPPINGS = [(), ("data",), ("population",), ("model",), ("model", "args"), ("client",), ("engine",),
            ("data", "partitioner_args"), ("data", "args"), ("evaluation",), ("output",)]  # fmt: skip
BAD_CHOICES = [
    (("data", "partitioner"), "nope"),
    (("data", "dataset"), "nope"),
    (("model", "name"), "nope"),
    (("client", "optimizer", "name"), "nope"),
    (("strategy", "name"), "nope"),
    (("model", "args", "hidden"), "big"),
    (("data", "partitioner_args"), [1, 2]),
    (("population", "devices", "speed"), {"dist": "constant", "value": -1.0}),
    (("population", "devices", "bandwidth"), {"dist": "uniform", "low": 0.0, "high": 5.0}),
    (("population", "clients"), 10**13),
    (("engine", "workers"), 10**6),
]


def put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


@st.composite
def malformed(draw: st.DrawFn, out_dir: str) -> str:
    """The text of a scenario file broken in one drawn way."""
    valid = base(out_dir)
    kind = draw(st.sampled_from(["number", "unknown_key", "choice", "duplicate", "raw"]))
    if kind == "number":
        return dump(put(valid, draw(st.sampled_from(NUMERIC_FIELDS)), draw(st.sampled_from(BAD_NUMBERS))))
    if kind == "unknown_key":
        where = draw(st.sampled_from(MAPPINGS))
        key = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12).map(lambda s: "zz" + s))
        return dump(put(valid, (*where, key), draw(st.sampled_from([1, "x", None, True]))))
    if kind == "choice":
        path, value = draw(st.sampled_from(BAD_CHOICES))
        return dump(put(valid, path, value))
    if kind == "duplicate":
        key = draw(st.sampled_from(list(valid)))
        return dump(valid) + dump({key: valid[key]})
    return draw(
        st.sampled_from(["", "# only a comment\n", "- a\n- b\n", "42\n", "name: [unclosed\n", "null\n"])
    )


@pytest.fixture
def no_training(monkeypatch):
    """Any scenario that reaches the run itself fails the test (nothing may start for a malformed file)."""
    import fedsim.run

    def refuse(*args, **kwargs):
        raise AssertionError("a malformed scenario reached run_scenario")

    monkeypatch.setattr(fedsim.run, "run_scenario", refuse)


def test_the_base_scenario_is_valid(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(dump(base(str(tmp_path / "runs"))))
    outcome = fedsim_cli("validate", str(path))
    assert outcome.code == 0 and outcome.err == "", outcome


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_scenarios_are_one_line_exit_2_and_write_nothing(no_training, data):
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "runs"
        text = data.draw(malformed(str(out_dir)))
        path = Path(tmp) / "s.yaml"
        path.write_text(text)
        outcome = fedsim_cli(data.draw(st.sampled_from(["run", "validate"])), str(path))
        assert_one_line_user_error(outcome, str(path))
        assert not out_dir.exists()
