"""Scenario files: schema, loading and validation."""

from fedsim.scenario.load import ScenarioError, load_scenario, parse_scenario, read_yaml
from fedsim.scenario.schema import Scenario

__all__ = ["Scenario", "ScenarioError", "load_scenario", "parse_scenario", "read_yaml"]
