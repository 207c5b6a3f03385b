"""A sample-level privacy plan reads every client's dataset size without building the examples (where the
dataset allows), and gives the plan the full build gives (oracle: the sizes of ``load_federated_data``)."""

from __future__ import annotations

import pytest

import fedsim.data.federated
from fedsim.data import load_federated_data
from fedsim.dp_plan import scenario_plan
from fedsim.privacy.plan import plan_from_scenario
from fedsim.scenario import load_scenario

SCENARIO = """\
name: s
seed: 3
rounds: 4
data: {{dataset: {dataset}, args: {args}, partitioner: {partitioner}, partitioner_args: {{}}, test_fraction: 0.1}}
population: {{clients: {clients}}}
client: {{batch_size: 16, epochs: 1}}
strategy: {{clients_per_round: 5}}
privacy: {{level: sample, clip: 1.0, noise_multiplier: 1.2, accountants: [rdp]}}
"""


def loader_arguments(sc) -> dict:
    """``load_federated_data``'s arguments for a scenario (the full build: the oracle)."""
    d = sc.data
    return dict(
        dataset=d.dataset, args=d.args, partitioner=d.partitioner, partitioner_args=d.partitioner_args,
        test_fraction=d.test_fraction, num_clients=sc.population.clients, seed=sc.seed,
    )  # fmt: skip


@pytest.mark.parametrize(
    "dataset, args, partitioner",
    [
        ("synthetic", "{dim: 5, samples: {mean: 3.0, sigma: 1.0, min: 5}}", "natural"),
        ("synthetic", "{dim: 5, samples: {mean: 3.0, sigma: 1.0, min: 5}}", "iid"),
        ("mnist1d", "{num_samples: 2000}", "iid"),
        ("blobs", "{shape: [4], samples_per_client: 40, test_samples: 10}", "dirichlet"),
    ],
)
def test_sample_level_plan_builds_no_examples_and_matches_the_full_build(
    tmp_path, monkeypatch, dataset, args, partitioner
):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(dataset=dataset, args=args, partitioner=partitioner, clients=40))
    sc = load_scenario(path, check_names=False)
    full = load_federated_data(**loader_arguments(sc)).partitions.sizes()
    expected = plan_from_scenario(sc, client_sizes=[int(n) for n in full])

    def boom(*args, **kwargs):
        raise AssertionError("the examples were built")

    monkeypatch.setattr(fedsim.data.federated, "load_federated_data", boom)
    plan = plan_from_scenario(sc, build=boom)  # neither the caller's build (the data cache) nor the loader
    assert plan.groups == expected.groups and plan.groups  # every client's size, grouped
    assert plan.mechanism == expected.mechanism and plan.worst_group == expected.worst_group


def test_sizes_that_need_the_examples_come_from_the_caller_s_build_else_the_loader(tmp_path, monkeypatch):
    # digits has no cheap path: the partition is built, by the caller's `build` (the commands pass the machine's
    # data cache) when given, else by the data layer's loader; both give the plan of the full build's sizes
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(dataset="digits", args="{}", partitioner="dirichlet", clients=10))
    sc = load_scenario(path, check_names=False)
    kwargs = loader_arguments(sc)
    full = load_federated_data(**kwargs)
    expected = plan_from_scenario(sc, client_sizes=[int(n) for n in full.partitions.sizes()])
    built = []

    def build():
        built.append(1)
        return full

    loaded = []

    def loader(**kw):
        loaded.append(kw)
        return full

    monkeypatch.setattr(fedsim.data.federated, "load_federated_data", loader)
    assert scenario_plan(sc, build=build) == expected and built == [1] and loaded == []
    assert scenario_plan(sc) == expected and built == [1] and loaded == [kwargs]
