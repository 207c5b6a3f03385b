"""Read a scenario file into a validated :class:`Scenario`, with one-line errors that name file and field.

Pydantic's errors are turned into the project's message shape
``<file>: <dotted.field> must be <constraint>. Got <value>.``; all problems of a file are collected and joined
on one line, so a user fixes them in one go.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedsim.errors import ConfigError, FedsimError
from fedsim.scenario.checks import check_scenario
from fedsim.scenario.choices import resolve_choices
from fedsim.scenario.schema import Scenario
from fedsim.scenario.yaml12 import load_yaml


class ScenarioError(FedsimError):
    """A scenario file is missing, unreadable or invalid. The message is one line."""


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (to list known keys)."""
    model: Any = Scenario
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error as '<field> must be <constraint>. Got <value>.'"""
    loc = tuple(err["loc"])
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    field = _loc(loc)
    got = f" Got {value!r}."
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        known = ", ".join(owner.model_fields) if owner else "see docs/scenarios.md"
        return f"{field} is not a known key. Known keys here: {known}."
    if kind == "missing":
        return f"{field} is required."
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        if loc:
            return f"{field}: {msg}."
        return msg if msg.endswith(".") else msg + "."
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[
            kind
        ]
        bound = next(iter(ctx.values()))
        return f"{field} must be a number {op} {bound}.{got}"
    if kind == "literal_error":
        return f"{field} must be one of {ctx.get('expected')}.{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{field} must be an integer.{got}"
    if kind in ("float_type", "float_parsing"):
        return f"{field} must be a number.{got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{field} must be a mapping of keys.{got}"
    if kind == "string_pattern_mismatch":
        return f"{field} must be letters, digits, '.', '_' or '-' (it names the results folder).{got}"
    if kind in ("string_type",):
        return f"{field} must be a string.{got}"
    if kind == "finite_number":
        return f"{field} must be a finite number.{got}"
    return f"{field}: {err['msg']}.{got}"


def _dedupe_union_errors(errors: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pydantic reports each branch of ``int | Literal['auto']``; keep one message per field."""
    seen: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for e in errors:
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "str"))))
        seen.setdefault(loc, {**e, "loc": loc})
    return list(seen.values())


INFINITY_ALLOWED = ("strategy.args",)
"""Subtrees whose owner gives ``.inf`` a meaning and checks it (DIFF2's ``clip1: .inf``: no clipping)."""


def _non_finite(data: Any, path: str = "") -> list[str]:
    """Every ``.nan``/``.inf`` in the raw file as '<field> must be a finite number. Got nan.' (no other scenario
    setting takes a non-finite number, and an optimizer's ``lr: .nan`` would otherwise reach training)."""
    if isinstance(data, float) and not math.isfinite(data):
        if math.isinf(data) and path.startswith(tuple(p + "." for p in INFINITY_ALLOWED)):
            return []
        return [f"{path or '(top level)'} must be a finite number. Got {data!r}."]
    if isinstance(data, Mapping):
        return [m for k, v in data.items() for m in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(data, (list, tuple)):
        return [m for i, v in enumerate(data) for m in _non_finite(v, f"{path}[{i}]")]
    return []


def parse_scenario(data: Any, *, source: str = "<scenario>") -> Scenario:
    """Validate an already-parsed mapping and resolve its nested choices' arguments with their own defaults.

    Raises:
        ScenarioError: one line naming ``source`` and every problem found.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError(
            f"{source}: the file must hold a mapping of keys (name:, rounds:, ...). Got {data!r}."
        )
    problems = _non_finite(data)
    if problems:
        raise ScenarioError(f"{source}: " + " ".join(problems))
    try:
        scenario = Scenario.model_validate(dict(data))
    except ValidationError as exc:
        problems = [_describe(e) for e in _dedupe_union_errors(exc.errors())]
        raise ScenarioError(f"{source}: " + " ".join(problems)) from None
    scenario, problems = resolve_choices(scenario)
    if problems:
        raise ScenarioError(f"{source}: " + " ".join(problems))
    return scenario


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file (YAML 1.2 numbers, duplicate keys refused); errors name the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"{p}: no such scenario file.")
    try:
        return load_yaml(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{p}: not valid YAML{where}: {problem}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{p}: cannot be read ({exc}).") from None


def load_scenario(path: str | Path, *, check_names: bool = True) -> Scenario:
    """Read and validate a scenario file, building nothing (no data, model, network or cache write).

    Args:
        path: the YAML file.
        check_names: also run :func:`~fedsim.scenario.checks.check_scenario`: registered names and their
            arguments, cross-field rules and this machine's limits, so mistakes fail here with the list of
            known names rather than mid-run.
    """
    scenario = parse_scenario(read_yaml(path), source=str(path))
    if check_names:
        try:
            check_scenario(scenario)
        except ConfigError as exc:
            raise ScenarioError(str(exc.with_source(str(path)))) from None
    return scenario

