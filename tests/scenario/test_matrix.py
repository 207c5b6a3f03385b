"""The scenario matrix, generated from the registries: every dataset × partitioner × model × strategy family ×
privacy level.

Each combination that validation accepts runs one round (one server step, one gossip evaluation) in process and
writes ``metrics.jsonl`` and ``report.md``; each one it refuses is refused with one line that names a scenario
field. Nothing is listed by hand: a new dataset, partitioner, model or strategy joins the matrix by registering.
Strategies are grouped into families by the type their factory builds; within a family the combinations take the
family's strategies in turn, so every registered strategy runs.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from typing import Any

import pytest

from fedsim.data import dataset_names, partitioner_names
from fedsim.errors import ConfigError, FedsimError
from fedsim.models import MODELS
from fedsim.scenario import parse_scenario
from fedsim.scenario.checks import check_scenario
from fedsim.scenario.schema import StrategyConfig
from strategies import STRATEGIES, build_strategy

POPULATION = 10  # enough nodes for the default gossip topology (8-regular)
# One accountant: the matrix checks that combinations run; the accountants have their own tests.
PRIVACY = {
    "none": None,
    "client": {"level": "client", "noise_multiplier": 1.0, "insecure_seed": True, "accountants": ["rdp"]},
    "sample": {"level": "sample", "noise_multiplier": 1.0, "insecure_seed": True, "accountants": ["rdp"]},
}


def required_args(name: str) -> dict[str, float]:
    """The ``strategy.args`` a strategy will not run without (found by asking its factory: each missing key is
    refused as ``strategy.args.<key> must be given``), each set to 0.1."""
    args: dict[str, float] = {}
    while True:
        try:
            build_strategy(StrategyConfig(name=name, clients_per_round=2, args=args), POPULATION)
            return args
        except ConfigError as exc:
            key = exc.field.removeprefix("strategy.args.")
            if key == exc.field or not exc.expected.startswith("given") or key in args:
                raise
            args[key] = 0.1


def family(name: str) -> str:
    """The family of a strategy: the type its factory builds (sync, event-driven, gossip, full batch)."""
    cfg = StrategyConfig(name=name, clients_per_round=2, args=required_args(name))
    return type(build_strategy(cfg, POPULATION)).__name__


def families() -> dict[str, list[str]]:
    """Registered strategies grouped by family."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in STRATEGIES.names():
        groups[family(name)].append(name)
    return dict(groups)


FAMILIES = families()


def combinations() -> list[tuple[str, str, str, str, str, str]]:
    """(id, dataset, partitioner, model, strategy, privacy) for the whole product, strategies taken in turn."""
    out, turn = [], defaultdict(int)
    for dataset, partitioner, model, family, privacy in itertools.product(
        dataset_names(), partitioner_names(), MODELS.names(), sorted(FAMILIES), sorted(PRIVACY)
    ):
        members = FAMILIES[family]
        strategy = members[turn[family] % len(members)]
        turn[family] += 1
        out.append(
            (f"{dataset}-{partitioner}-{model}-{strategy}-{privacy}", dataset, partitioner, model, strategy, privacy)
        )
    return out


def scenario_dict(dataset: str, partitioner: str, model: str, strategy: str, privacy: str) -> dict[str, Any]:
    """A tiny scenario: one round of the combination, defaults for everything the combination does not name."""
    cohort = POPULATION if family(strategy) == "Diff2Strategy" else 3  # full batch: every client every round
    sc: dict[str, Any] = {
        "name": "matrix",
        "seed": 1,
        "rounds": 1,
        "data": {"dataset": dataset, "partitioner": partitioner},
        "population": {"clients": POPULATION},
        "model": {"name": model},
        "client": {"batch_size": 8},
        "strategy": {"name": strategy, "clients_per_round": cohort, "args": required_args(strategy)},
        "privacy": PRIVACY[privacy],
        "engine": {"backend": "inprocess"},
        "evaluation": {"test_examples": 32},  # gossip evaluates every node's model: a CNN on 1000 blobs is seconds
    }
    if strategy == "gossip":
        sc["gossip"] = {"ticks": 2, "eval_every": 2, "interval": [1, 1]}
    return sc


def assert_names_a_field(message: str, sc: dict[str, Any]) -> None:
    """One line whose subject is a dotted scenario field (``data.partitioner must be …``)."""
    assert "\n" not in message, message
    subject = message.split(" ", 1)[0].rstrip(":")
    assert subject.split(".")[0] in {*sc, "gossip", "population", "client"}, message


COMBINATIONS = combinations()


def test_the_matrix_covers_every_registered_name():
    names = {name: set() for name in ("dataset", "partitioner", "model", "strategy")}
    for _, d, p, m, s, _ in COMBINATIONS:
        for key, value in zip(names, (d, p, m, s), strict=True):
            names[key].add(value)
    assert names["dataset"] == set(dataset_names())
    assert names["partitioner"] == set(partitioner_names())
    assert names["model"] == set(MODELS.names())
    assert names["strategy"] == set(STRATEGIES.names())
    assert len(FAMILIES) >= 4  # sync, event-driven, gossip, full batch


@pytest.mark.parametrize(
    ("dataset", "partitioner", "model", "strategy", "privacy"),
    [c[1:] for c in COMBINATIONS],
    ids=[c[0] for c in COMBINATIONS],
)
def test_combination_runs_or_is_refused_in_one_line(tmp_path, dataset, partitioner, model, strategy, privacy):
    from fedsim.run import run_scenario

    sc = scenario_dict(dataset, partitioner, model, strategy, privacy)
    try:
        scenario = parse_scenario(sc)
        check_scenario(scenario)
    except FedsimError as exc:
        assert_names_a_field(str(exc).removeprefix("<scenario>: "), sc)
        return
    try:
        outcome = run_scenario(scenario, output_root=tmp_path, show_progress=False)
    except FedsimError as exc:  # checks that need the built data (e.g. a natural partition without user ids)
        assert_names_a_field(str(exc), sc)
        assert not any(tmp_path.iterdir()), "a refused run left a results folder"
        return
    rows = [json.loads(line) for line in (outcome.path / "metrics.jsonl").read_text().splitlines()]
    assert rows, "no metrics row"
    assert (outcome.path / "report.md").is_file()
