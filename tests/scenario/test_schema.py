"""Scenario files: valid files load with defaults; every kind of mistake is one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fedsim.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_every_shipped_scenario_is_valid():
    files = sorted((ROOT / "scenarios").glob("*.yaml"))
    assert files, "no scenarios shipped"
    for f in files:
        assert isinstance(load_scenario(f), Scenario)


def test_quickstart_has_the_issue_settings():
    sc = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    assert (sc.data.dataset, sc.data.partitioner, sc.data.partitioner_args["alpha"]) == (
        "digits",
        "dirichlet",
        0.5,
    )
    assert (sc.population.clients, sc.strategy.clients_per_round, sc.strategy.name) == (100, 10, "fedavg")


def test_minimal_file_gets_spec_defaults(tmp_path):
    sc = load_scenario(write(tmp_path, "name: tiny\n"))
    assert sc.rounds == 30 and sc.seed == 0
    assert sc.client.optimizer.name == "sgd" and sc.client.optimizer.kwargs() == {"lr": 0.05}
    assert sc.strategy.server_optimizer.kwargs() == {"lr": 1.0}
    assert sc.engine.workers == "auto" and sc.privacy is None


def test_resolved_scenario_round_trips():
    sc = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    again = parse_scenario(sc.model_dump(mode="json"))
    assert again == sc


def test_scenario_is_frozen():
    sc = parse_scenario({"name": "x"})
    with pytest.raises(ValidationError):
        sc.rounds = 3  # type: ignore[misc]


BAD = [
    ("name: x\nrounds: 0\n", "rounds must be a number >= 1. Got 0."),
    ("name: x\nrounds: ten\n", "rounds must be an integer. Got 'ten'."),
    (
        "name: x\nstrategy: {clients_per_round: 0}\n",
        "strategy.clients_per_round must be a number >= 1. Got 0.",
    ),
    (
        "name: x\npopulation: {clients: 5}\nstrategy: {clients_per_round: 6}\n",
        "strategy.clients_per_round must be an integer between 1 and population.clients (5). Got 6",
    ),
    ("name: x\nroundz: 3\n", "roundz is not a known key. Known keys here: name, seed, rounds"),
    ("name: x\ndata: {datset: digits}\n", "data.datset is not a known key. Known keys here: dataset, args"),
    ("name: x\nengine: {workers: 0}\n", "engine.workers: must be 'auto' or an integer >= 1. Got 0."),
    ("name: x\nengine: {workers: many}\n", "engine.workers: must be 'auto' or an integer >= 1. Got 'many'."),
    (
        "name: x\nengine: {vectorize: maybe}\n",
        "engine.vectorize must be one of 'auto', 'on' or 'off'. Got 'maybe'.",
    ),
    ("name: x\ndata: {test_fraction: 1.5}\n", "data.test_fraction must be a number < 1.0. Got 1.5."),
    (
        "name: x\npopulation: {devices: {speed: {dist: lognormal, mean: 3}}}\n",
        "population.devices.speed: a lognormal distribution needs mean, sigma; missing sigma.",
    ),
    ("name: a/b\n", "name must be letters, digits"),
    ("rounds: 3\n", "name is required."),
    (
        "name: x\nprivacy: {level: sample, per_layer: uniform}\n",
        "privacy: per_layer applies to level 'client' only; with level 'sample' leave it unset",
    ),
    (
        "name: x\nprivacy: {level: sample, sampling: fixed_size}\n",
        "privacy: sampling must be 'poisson' with level 'sample'",
    ),
    (
        "name: x\nstrategy: {name: fedavgg}\n",
        "strategy.name must be one of async_fedavg, diff2, dp_gd, fedadam, fedavg, fedavg_sync, fedavgm, fedbuff, "
        "fedfix, fedyogi, gossip. "
        "Got 'fedavgg'.",
    ),
    ("name: x\nmodel: {name: resnet}\n", "model.name must be one of cnn, mlp, simple_cnn. Got 'resnet'."),
    (
        "name: x\nclient: {optimizer: {name: sgd, lr: -1}}\n",
        "client.optimizer.lr must be a number > 0. Got -1.",
    ),
    (
        "name: x\nclient: {optimizer: {name: sgd, lrr: 1}}\n",
        "client.optimizer.lrr must be one of the arguments",
    ),
    (
        "name: x\nclient: {optimizer: {name: sgdd}}\n",
        "client.optimizer.name must be one of adam, adam8bit, adamw, agvm_sgd",
    ),
    ("name: x\nstrategy: {server_optimizer: {name: adam, lr: 0}}\n", "strategy.server_optimizer.lr must be"),
    ("name: x\ndata: {dataset: cifar}\n", "data.dataset must be one of"),
    ("name: x\ndata: {partitioner: random}\n", "data.partitioner must be one of"),
    (
        "name: x\nengine: {vectorize: 'on'}\npopulation: {clients: 10}\nmodel: {name: simple_cnn, args: {conv_dropout: 0.25}}\n"
        "data: {dataset: blobs, args: {shape: [3, 8, 8], samples_per_client: 4}}\n",
        "engine.vectorize must be 'auto' or 'off' here, because the model has active dropout",
    ),
    (
        "name: x\nengine: {memory_budget_mb: 0}\n",
        "engine.memory_budget_mb: must be 'auto' or a number of MiB > 0",
    ),
    (
        "name: x\nclient: {optimizer_state: persistent}\n",
        "client.optimizer_state must be 'fresh' in this version",
    ),
    ("name: x\ndata: {partitioner_args: {alpha: -1}}\n", "data.partitioner_args.alpha must be"),
    ("name: x\ndata: {partitioner: iid, partitioner_args: {beta: 1}}\n", "data.partitioner_args.beta"),
    ("- just\n- a list\n", "the file must hold a mapping of keys"),
    ("name: x\n  bad: indent\n", "not valid YAML (line"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_files_fail_with_one_line_naming_file_and_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert expected in msg, msg
    assert "\n" not in msg


def test_all_problems_of_a_file_are_reported_together(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, "name: x\nrounds: 0\nseed: -1\n"))
    assert "rounds must be" in str(info.value) and "seed must be" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.yaml")
