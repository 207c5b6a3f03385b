"""Build a run's data and initial model from its scenario: the same on the server and on every worker; and the
run's seeds that are not public (DP noise, DP cohorts)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from fedsim.data import FederatedData, LazyFederatedData, draws_per_client, load_federated_data
from fedsim.engine.data_cache import cached
from fedsim.gradcore.dp import secure_generator, seeded_generator
from fedsim.models import build_model
from fedsim.randomness import Stream, derive_int, secret_seed
from fedsim.scenario import Scenario


def build_data(scenario: Scenario) -> FederatedData | LazyFederatedData:
    """The partitioned dataset of the scenario (deterministic in ``scenario.seed``), from the machine's data
    cache when another process (or an earlier run) already built it (``fedsim.engine.data_cache``). A
    client-drawn dataset (``data.args.draw: client``) is built here, without the cache: it holds only its test
    set and its clients' sizes, and every process draws the clients it trains (``LazyFederatedData``)."""
    if draws_per_client(scenario.data.dataset, scenario.data.args):
        return load_data(scenario)
    return cached(scenario, lambda: load_data(scenario))


def evaluation_data(data: FederatedData | LazyFederatedData, scenario: Scenario) -> FederatedData:
    """``data`` with its central test set cut to the first ``evaluation.test_examples`` examples (if set)."""
    n = scenario.evaluation.test_examples
    if n is None or n >= len(data.test_y):
        return data
    return dataclasses.replace(data, test_x=data.test_x[:n], test_y=data.test_y[:n])


def load_data(scenario: Scenario) -> FederatedData | LazyFederatedData:
    """Build the partitioned dataset of the scenario in this process, without the cache."""
    d = scenario.data
    return load_federated_data(
        dataset=d.dataset,
        args=d.args,
        partitioner=d.partitioner,
        partitioner_args=d.partitioner_args,
        test_fraction=d.test_fraction,
        num_clients=scenario.population.clients,
        seed=scenario.seed,
    )


def build_initial_model(scenario: Scenario, data: FederatedData) -> nn.Module:
    """The model with its initial weights, a pure function of the scenario seed."""
    seed = derive_int(scenario.seed, Stream.MODEL_INIT)
    return build_model(
        scenario.model.name,
        scenario.model.args,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=seed,
    )


def noise_generator(scenario: Scenario) -> torch.Generator:
    """The DP noise's randomness: seeded by the OS CSPRNG, unless ``privacy.insecure_seed`` asks for the scenario
    seed (reproducible, and then every report says the run is not private)."""
    if scenario.privacy is not None and scenario.privacy.insecure_seed:
        return seeded_generator(derive_int(scenario.seed, Stream.NOISE))
    return secure_generator()


def cohort_seed(scenario: Scenario) -> int | None:
    """The seed of a DP run's cohort draws (``Stream.COHORT``): a fresh secret from the OS CSPRNG, or the
    scenario seed with ``privacy.insecure_seed`` (reproducible; the report then says the run is not private).
    None for a run without DP: its cohorts come from the public per-round stream.

    Amplification by sampling holds only while who was sampled is secret, and ``scenario.yaml`` publishes the
    scenario seed. The engine keeps the secret in its own state (``Engine.cohort_seed``), never in the scenario,
    the metrics or the reports.
    """
    if scenario.privacy is None:
        return None
    return scenario.seed if scenario.privacy.insecure_seed else secret_seed()
