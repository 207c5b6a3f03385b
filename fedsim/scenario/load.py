"""Read a scenario file into a validated :class:`Scenario`, with one-line errors that name file and field.

Pydantic's errors are turned into the project's message shape
``<file>: <dotted.field> must be <constraint>. Got <value>.``; all problems of a file are collected and joined
on one line, so a user fixes them in one go.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedsim.errors import ConfigError, FedsimError
from fedsim.scenario.schema import Scenario


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


def parse_scenario(data: Any, *, source: str = "<scenario>") -> Scenario:
    """Validate an already-parsed mapping; raise :class:`ScenarioError` with one line naming ``source``."""
    if not isinstance(data, Mapping):
        raise ScenarioError(
            f"{source}: the file must hold a mapping of keys (name:, rounds:, ...). Got {data!r}."
        )
    try:
        return Scenario.model_validate(dict(data))
    except ValidationError as exc:
        problems = [_describe(e) for e in _dedupe_union_errors(exc.errors())]
        raise ScenarioError(f"{source}: " + " ".join(problems)) from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; errors name the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"{p}: no such scenario file.")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{p}: not valid YAML{where}: {problem}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{p}: cannot be read ({exc}).") from None


def load_scenario(path: str | Path, *, check_names: bool = True) -> Scenario:
    """Read, validate and (by default) resolve every registered name in a scenario file.

    Args:
        path: the YAML file.
        check_names: also resolve strategy, optimizer, model, dataset and partitioner names through their
            registries, so unknown names fail here with the list of known ones rather than mid-run.
    """
    scenario = parse_scenario(read_yaml(path), source=str(path))
    if check_names:
        try:
            check_registered_names(scenario)
        except ConfigError as exc:
            raise ScenarioError(str(exc.with_source(str(path)))) from None
    return scenario


def check_registered_names(scenario: Scenario) -> None:
    """Resolve every name the scenario uses and build what is cheap to build (server optimizer, offline data
    and partitions), so typos and bad values fail before any worker starts."""
    # Imported here: the registries pull in torch and the data stack, which plain schema checks do not need.
    from clients.optimizers import check_optimizer_spec
    from fedsim.data import dataset_names, partitioner_names
    from fedsim.engine.cohort import select_cohort_trainer
    from fedsim.errors import UnknownNameError
    from fedsim.models import MODELS
    from strategies import build_strategy
    from strategies.asynchronous import RULE_NAMES
    from strategies.server_optimizers import build_server_optimizer

    build_strategy(scenario.strategy, scenario.population.clients)  # its arguments, checked by the factory
    if scenario.strategy.name == "gossip" and scenario.privacy is not None:
        raise ConfigError(
            "privacy",
            "null with strategy 'gossip' (this version has no DP accounting for decentralised gossip: every "
            "node's model is sent to its neighbours, not noised once on a server)",
            scenario.privacy.level,
        )
    _check_full_batch_strategy(scenario)
    availability = scenario.population.devices.availability
    if not isinstance(availability, int | float):  # a trace file: read it now, not when the run has started
        from fedsim.engine.profiles import load_trace

        load_trace(availability.trace, scenario.population.clients)
    if scenario.strategy.name in RULE_NAMES and scenario.privacy is not None:
        raise ConfigError(
            "privacy",
            f"null with strategy {scenario.strategy.name!r}: this version runs DP with the synchronous "
            "FedAvg family only (an event-driven step is not a Poisson sample of clients, so the accountants' "
            "amplification does not hold, and which clients share a FedBuff or deadline step depends on "
            "the others' presence)",
            scenario.privacy.level,
        )
    build_server_optimizer(
        {"name": scenario.strategy.server_optimizer.name, **scenario.strategy.server_optimizer.kwargs()}
    )
    check_optimizer_spec(scenario.client.optimizer.name, scenario.client.optimizer.kwargs())
    MODELS.get(scenario.model.name)
    if scenario.client.optimizer_state != "fresh":
        raise ConfigError(
            "client.optimizer_state",
            "'fresh' in this version (per-client persistent optimizer state is not implemented yet)",
            scenario.client.optimizer_state,
        )
    ds = scenario.data.dataset
    if not (ds.startswith("hf:") or ds.startswith("parquet:") or ds in dataset_names()):
        raise UnknownNameError("data.dataset", ds, [*dataset_names(), "hf:<name>", "parquet:<path>"])
    if scenario.data.partitioner not in partitioner_names():
        raise UnknownNameError("data.partitioner", scenario.data.partitioner, partitioner_names())
    if not ds.startswith("hf:"):  # offline data is cheap to build: its arguments are checked for real
        from fedsim.engine.messages import train_config
        from fedsim.engine.protocol import NOISE_MULTIPLIER_KEY
        from fedsim.engine.setup import build_data, build_initial_model

        data = build_data(scenario)
        _check_task(scenario, data.task)
        if scenario.strategy.name == "gossip":
            # the topology (connected?) and the protocol, before any worker starts
            from fedsim.gossip.network import build_network

            model = build_initial_model(scenario, data)
            if any(True for _ in model.buffers()):
                raise ConfigError(
                    "model", "a model without buffers (no BatchNorm) for gossip", scenario.model.name
                )
            build_network(scenario, data, model)
        # σ does not decide which trainer runs; the server sends the resolved one every round
        cfg = train_config(scenario, {NOISE_MULTIPLIER_KEY: 1.0})
        select_cohort_trainer(scenario.engine.vectorize, build_initial_model(scenario, data), cfg)


def _check_full_batch_strategy(scenario: Scenario) -> None:
    """DIFF2-GD / DP-GD (``strategies.diff2``) use every client in every round: no cohort, no failures."""
    from strategies.diff2 import DIFF2_NAMES

    name = scenario.strategy.name
    if name not in DIFF2_NAMES:
        return
    devices, clients = scenario.population.devices, scenario.population.clients
    if scenario.strategy.clients_per_round != clients:
        raise ConfigError(
            "strategy.clients_per_round",
            f"equal to population.clients ({clients}) for {name} (every client takes part in every round)",
            scenario.strategy.clients_per_round,
        )
    if devices.failure != 0 or devices.availability != 1.0:
        field = "failure" if devices.failure != 0 else "availability"
        raise ConfigError(
            f"population.devices.{field}",
            f"{'0' if field == 'failure' else '1.0'} for {name} (its recursion needs every client every round)",
            getattr(devices, field),
        )


def _check_task(scenario: Scenario, task: str | None) -> None:
    """Regression data go with the full-batch squared-loss strategies only, and those need regression data."""
    from strategies.diff2 import DIFF2_NAMES

    name = scenario.strategy.name
    if name in DIFF2_NAMES and task != "regression":
        raise ConfigError(
            "data.dataset",
            f"a regression dataset (diabetes, regression) for {name} (it fits the squared loss)",
            scenario.data.dataset,
        )
    if name not in DIFF2_NAMES and task == "regression":
        raise ConfigError(
            "strategy.name",
            f"one of {', '.join(DIFF2_NAMES)} for the regression dataset {scenario.data.dataset!r} (the other "
            "strategies train classifiers with the cross-entropy loss)",
            name,
        )
