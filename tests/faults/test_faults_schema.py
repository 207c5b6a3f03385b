"""The ``faults`` block: defaults, one-line errors naming the field, ``population.devices.failure`` as the older
name of ``faults.crash``, and the cheap checks of ``fedsim validate``."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ConfigError
from fedsim.scenario import ScenarioError, parse_scenario
from fedsim.scenario.checks import check_scenario
from fedsim.scenario.schema import DevicesConfig, FaultsConfig, PopulationConfig, Scenario

BASE: dict[str, Any] = {"name": "faults", "population": {"clients": 10}, "strategy": {"clients_per_round": 5}}


def with_faults(**block: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), "faults": block}


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(raw)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_default_is_no_faults():
    sc = parse_scenario(copy.deepcopy(BASE))
    assert sc.faults == FaultsConfig()
    assert (sc.faults.crash, sc.faults.nonfinite) == (0.0, 0.0)
    assert (sc.faults.stragglers.fraction, sc.faults.stragglers.slowdown) == (0.0, 1.0)
    assert sc.population.devices.failure == 0.0


def test_a_faults_block_is_read_and_round_trips():
    sc = parse_scenario(with_faults(crash=0.1, nonfinite=0.2, stragglers={"fraction": 0.3, "slowdown": 4}))
    assert (sc.faults.crash, sc.faults.nonfinite) == (0.1, 0.2)
    assert (sc.faults.stragglers.fraction, sc.faults.stragglers.slowdown) == (0.3, 4.0)
    assert parse_scenario(sc.model_dump(mode="json")) == sc  # the resolved scenario.yaml reads back unchanged


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ({"population": {"devices": {"failure": 0.25}}}, 0.25),  # the older name alone
        ({"faults": {"crash": 0.25}}, 0.25),  # the documented name alone
        ({"faults": {"crash": 0.25}, "population": {"devices": {"failure": 0.25}}}, 0.25),  # both, equal
    ],
)
def test_crash_and_its_older_name_hold_one_value(raw, value):
    sc = parse_scenario(
        {**copy.deepcopy(BASE), **raw, "population": {"clients": 10, **raw.get("population", {})}}
    )
    assert sc.faults.crash == sc.population.devices.failure == value
    assert parse_scenario(sc.model_dump(mode="json")) == sc


def test_crash_and_its_older_name_given_with_different_values_are_one_error_naming_both():
    raw = with_faults(crash=0.1)
    raw["population"] = {"clients": 10, "devices": {"failure": 0.2}}
    message = error_of(raw)
    assert "faults.crash" in message and "population.devices.failure" in message
    assert "0.1" in message and "0.2" in message


def test_python_construction_keeps_the_two_names_equal():
    by_new = Scenario(name="a", faults=FaultsConfig(crash=0.3))
    by_old = Scenario(name="a", population=PopulationConfig(devices=DevicesConfig(failure=0.3)))
    assert by_new.population.devices.failure == 0.3 and by_old.faults.crash == 0.3


def test_a_bad_older_name_is_reported_once_under_its_own_name():
    raw = copy.deepcopy(BASE)
    raw["population"] = {"clients": 10, "devices": {"failure": 1.5}}
    message = error_of(raw)
    assert "population.devices.failure" in message and "faults.crash" not in message


def test_an_unknown_key_in_faults_is_named_with_the_known_ones():
    message = error_of(with_faults(stragglers={"fraction": 0.1, "slow": 2}))
    assert "faults.stragglers.slow is not a known key" in message and "slowdown" in message
    assert "faults.crashes is not a known key" in error_of(with_faults(crashes=0.1))


NOT_A_NUMBER = st.one_of(
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
PROBABILITY_BELOW_ONE = st.one_of(
    st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.integers(max_value=-1)
)
BAD = {
    ("crash",): st.one_of(NOT_A_NUMBER, PROBABILITY_BELOW_ONE),
    ("nonfinite",): st.one_of(NOT_A_NUMBER, PROBABILITY_BELOW_ONE),
    ("stragglers", "fraction"): st.one_of(
        NOT_A_NUMBER, st.floats(max_value=-1e-9), st.floats(min_value=1.0 + 1e-9), st.integers(min_value=2)
    ),
    ("stragglers", "slowdown"): st.one_of(
        NOT_A_NUMBER, st.floats(max_value=1.0 - 1e-9), st.integers(max_value=0)
    ),
}


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_a_malformed_fault_value_is_one_line_naming_its_field(data):
    path = data.draw(st.sampled_from(sorted(BAD)))
    value = data.draw(BAD[path])
    block: dict[str, Any] = {}
    node = block
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    message = error_of(with_faults(**block))
    assert "faults." + ".".join(path) in message, message


def test_validation_accepts_faults_for_every_family_but_refuses_crashes_for_diff2():
    for strategy in ({"name": "fedavg", "clients_per_round": 5}, {"name": "fedbuff", "clients_per_round": 5}):
        check_scenario(parse_scenario({**with_faults(crash=0.1, nonfinite=0.1), "strategy": strategy}))
    gossip = {**with_faults(crash=0.1, nonfinite=0.1, stragglers={"fraction": 0.5, "slowdown": 2.0})}
    check_scenario(parse_scenario({**gossip, "strategy": {"name": "gossip", "clients_per_round": 10}}))
    diff2 = {
        "name": "d2",
        "data": {"dataset": "diabetes", "partitioner": "iid"},
        "population": {"clients": 5},
        "model": {"name": "mlp", "args": {"hidden": [4]}},
        "strategy": {"name": "diff2", "clients_per_round": 5, "args": {"lr": 0.1}},
    }
    check_scenario(parse_scenario({**diff2, "faults": {"nonfinite": 0.2, "stragglers": {"fraction": 0.2}}}))
    for raw in (
        {**diff2, "faults": {"crash": 0.1}},
        {**diff2, "population": {"clients": 5, "devices": {"failure": 0.1}}},
    ):
        with pytest.raises(ConfigError) as err:
            check_scenario(parse_scenario(raw))
        assert err.value.field == "faults.crash" and "population.devices.failure" in str(err.value)
