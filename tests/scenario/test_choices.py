"""Per-choice defaults, generated from the registries: every partitioner, topology kind and dataset named alone
validates with its OWN defaults; partitioners also build; the docs' table is the registries'."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedsim.data  # noqa: F401  (registers the datasets)
from fedsim.argspec import REQUIRED, spec_of
from fedsim.data import load_federated_data
from fedsim.data.base import DATASETS
from fedsim.data.partitioners import PARTITIONERS
from fedsim.gossip.topology import SPECS, build_topology, check_topology_args
from fedsim.models import MODELS
from fedsim.models.registry import MODEL_ARGS
from fedsim.scenario import ScenarioError, load_scenario, parse_scenario
from fedsim.scenario.choices import render_doc

ROOT = Path(__file__).resolve().parents[2]

# blobs has balanced labels for the label-based partitioners; synthetic carries the user ids natural needs
DATA = {
    "blobs": {"shape": [4], "samples_per_client": 30, "test_samples": 20},
    "synthetic": {"samples": {"dist": "constant", "value": 30}},
}


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_each_partitioner_named_alone_validates_with_its_own_defaults(name, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: p\ndata: {{dataset: synthetic, partitioner: {name}}}\npopulation: {{clients: 10}}\n"
    )
    sc = load_scenario(path)
    assert sc.data.partitioner_args == spec_of(PARTITIONERS.get(name)).defaults()
    if name != "dirichlet":
        assert "alpha" not in sc.data.partitioner_args  # Dirichlet's default does not leak


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_each_partitioner_builds_a_tiny_population_from_its_defaults(name):
    dataset = "synthetic" if name == "natural" else "blobs"
    data = load_federated_data(
        dataset=dataset, args=DATA[dataset], partitioner=name, partitioner_args={},
        test_fraction=0.2, num_clients=10, seed=0,
    )  # fmt: skip
    sizes = data.partitions.sizes()
    assert len(sizes) == 10 and sizes.min() >= 1
    assert sizes.sum() <= len(data.train_x)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_each_topology_kind_named_alone_validates_or_asks_for_its_required_argument(kind, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: g\nstrategy: {{name: gossip, clients_per_round: 20}}\npopulation: {{clients: 20}}\n"
        f"gossip: {{topology: {{kind: {kind}}}}}\n"
    )
    required = [p.name for p in SPECS[kind].params if p.default is REQUIRED]
    if required:
        with pytest.raises(ScenarioError, match=rf"gossip.topology.{required[0]} must be given"):
            load_scenario(path)
        return
    sc = load_scenario(path)
    assert sc.gossip is not None and sc.gossip.topology.args == SPECS[kind].defaults()
    args = check_topology_args(kind, 20, sc.gossip.topology.args)
    graph = build_topology(kind, nodes=20, args=sc.gossip.topology.args, seed=0)
    assert graph.number_of_nodes() == 20
    if kind == "regular":
        assert {d for _, d in graph.degree()} == {args["k"]} == {8}


@pytest.mark.parametrize("name", DATASETS.names())
def test_each_dataset_named_alone_resolves_its_own_defaults(name):
    sc = parse_scenario({"name": "d", "data": {"dataset": name, "partitioner": "iid"}})
    assert sc.data.args == spec_of(DATASETS.get(name)).defaults()


@pytest.mark.parametrize("name", MODELS.names())
def test_model_specs_match_the_factories_keyword_defaults(name):
    """The spec's defaults are the factory's own (so building without the spec would give the same model)."""
    params = inspect.signature(MODELS.get(name)).parameters
    declared = {k: p.default for k, p in params.items() if k not in ("input_shape", "num_classes")}
    spec = MODEL_ARGS[name].defaults()
    assert set(spec) == set(declared)
    for key, value in declared.items():
        assert spec[key] == (list(value) if isinstance(value, tuple) else value), key


def test_model_args_are_type_checked_without_building(monkeypatch):
    def built(**kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setitem(MODELS._items, "mlp", built)
    with pytest.raises(ScenarioError, match=r"model.args.hidden must be a list of integers >= 1. Got 'big'."):
        parse_scenario({"name": "m", "model": {"name": "mlp", "args": {"hidden": "big"}}})
    with pytest.raises(ScenarioError, match=r"model.args.channels must be an integer >= 1. Got 2.5."):
        parse_scenario({"name": "m", "model": {"name": "cnn", "args": {"channels": 2.5}}})


def test_the_docs_table_is_generated_from_the_registries():
    doc = (ROOT / "docs" / "scenarios.md").read_text(encoding="utf-8")
    assert render_doc(doc) == doc, "run: python -m fedsim.scenario.choices --write docs/scenarios.md"


def test_the_resolved_scenario_is_written_with_every_choice_resolved():
    sc = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    assert sc.data.partitioner_args == {"alpha": 0.5, "min_partition_size": None, "self_balancing": False,
                                        "shuffle": True}  # fmt: skip
    assert sc.model.args == {"hidden": [64], "activation": "relu"}
    assert parse_scenario(sc.model_dump(mode="json")) == sc  # what RunDir writes reads back unchanged


CHOICES = st.sampled_from(
    [("partitioner", n) for n in PARTITIONERS.names()] + [("dataset", n) for n in DATASETS.names()]
)


@settings(max_examples=40, deadline=None)
@given(choice=CHOICES, seed=st.integers(0, 10**6))
def test_resolution_is_idempotent(choice, seed):
    """Resolving an already resolved scenario changes nothing (a run's scenario.yaml reruns unchanged)."""
    field, name = choice
    data = {"dataset": "synthetic", "partitioner": "iid"} | {field: name}
    once = parse_scenario({"name": "r", "seed": seed, "data": data})
    assert parse_scenario(once.model_dump(mode="json")) == once


def test_arguments_of_another_choice_are_refused_with_the_accepted_keys():
    with pytest.raises(ScenarioError, match=r"data.partitioner_args.alpha must be an accepted key of iid"):
        parse_scenario({"name": "x", "data": {"partitioner": "iid", "partitioner_args": {"alpha": 0.5}}})
    with pytest.raises(ScenarioError, match=r"gossip.topology.k must be an accepted key of topology 'ring'"):
        parse_scenario({"name": "x", "strategy": {"name": "gossip"}, "gossip": {"topology": {"kind": "ring",
                        "args": {"k": 8}}}})  # fmt: skip
