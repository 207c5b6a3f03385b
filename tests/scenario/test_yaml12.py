"""Scenario YAML: numbers as YAML 1.2 reads them (checked against the spec's examples and Python's float()),
non-finite numbers refused with one line naming the field, repeated keys refused with their line."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fedsim.scenario import ScenarioError, load_scenario
from fedsim.scenario.yaml12 import load_yaml


@pytest.mark.parametrize("text", ["1e-3", "1.0e6", "-2E5", ".5e1", "+1.5", "2.", "6.8523015e+5"])
def test_yaml_12_floats(text):
    value = load_yaml(f"x: {text}")["x"]
    assert isinstance(value, float) and value == float(text)


def test_pyyaml_alone_reads_exponent_floats_as_strings():
    """Why the loader exists: YAML 1.1 needs a dot in a float."""
    assert yaml.safe_load("x: 1e-3")["x"] == "1e-3"


@pytest.mark.parametrize(("text", "expected"), [("10", 10), ("-3", -3), ("0x10", 16), ("true", True), ("abc", "abc"),
                                                ("'1e-3'", "1e-3"), ("null", None), ("1_000", 1000)])  # fmt: skip
def test_other_scalars_keep_their_types(text, expected):
    value = load_yaml(f"x: {text}")["x"]
    assert value == expected and type(value) is type(expected)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_float_python_writes_reads_back(x):
    assert load_yaml(f"x: {x!r}")["x"] == x  # repr gives forms like 1e-05 and 1e+16, YAML 1.1 strings


def test_learning_rate_in_exponent_form_is_a_number(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\nclient: {optimizer: {name: sgd, lr: 1e-3}}\nstrategy: {server_optimizer: {name: sgd, lr: 1.0e0}}\n"
    )
    sc = load_scenario(path)
    assert sc.client.optimizer.kwargs()["lr"] == 0.001


@pytest.mark.parametrize(("text", "field", "shown"), [
    ("client: {optimizer: {name: sgd, lr: .nan}}", "client.optimizer.lr", "nan"),
    ("client: {optimizer: {name: sgd, lr: .inf}}", "client.optimizer.lr", "inf"),
    ("data: {test_fraction: -.inf}", "data.test_fraction", "-inf"),
    ("population: {devices: {speed: {dist: constant, value: .NaN}}}", "population.devices.speed.value", "nan"),
])  # fmt: skip
def test_non_finite_numbers_are_refused_naming_the_field(tmp_path, text, field, shown):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\n{text}\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == f"{path}: {field} must be a finite number. Got {shown}."


def test_repeated_keys_are_refused_with_their_lines(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nclient:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "duplicate key 'epochs' (first on line 3)" in str(info.value)
    assert "(line 4," in str(info.value) and "\n" not in str(info.value)


def test_merge_keys_still_work():
    assert load_yaml("a: &x {p: 1}\nb: {<<: *x, q: 2}")["b"] == {"p": 1, "q": 2}
    assert not math.isnan(load_yaml("x: 1.5")["x"])


def test_infinity_is_kept_where_a_strategy_gives_it_a_meaning(tmp_path):
    """DIFF2's ``clip1: .inf`` means no clipping; the strategy's own check still refuses ``.nan`` there."""
    head = "name: x\ndata: {dataset: diabetes, partitioner: iid}\npopulation: {clients: 4}\n"
    path = tmp_path / "s.yaml"
    path.write_text(
        head + "strategy: {name: diff2, clients_per_round: 4, args: {lr: 0.1, clip1: .inf, clip2: .inf}}\n"
    )
    assert load_scenario(path).strategy.args["clip1"] == math.inf
    path.write_text(head + "strategy: {name: diff2, clients_per_round: 4, args: {lr: 0.1, clip1: .nan}}\n")
    with pytest.raises(ScenarioError, match="strategy.args.clip1"):
        load_scenario(path)
