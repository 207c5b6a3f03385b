"""Build a run's data and initial model from its scenario: the same on the server and on every worker."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsim.data import FederatedData, load_federated_data
from fedsim.engine.data_cache import cached
from fedsim.gradcore.dp import secure_generator, seeded_generator
from fedsim.models import build_model
from fedsim.scenario import Scenario

# Independent streams derived from the one scenario seed (numpy SeedSequence entropy tags).
MODEL_INIT_TAG = 1
SAMPLING_TAG = 2
CLIENT_SEED_TAG = 3
DEVICE_TAG = 4
NOISE_TAG = 5


def build_data(scenario: Scenario) -> FederatedData:
    """The partitioned dataset of the scenario (deterministic in ``scenario.seed``), from the machine's data
    cache when another process (or an earlier run) already built it (``fedsim.engine.data_cache``)."""
    return cached(scenario, lambda: load_data(scenario))


def load_data(scenario: Scenario) -> FederatedData:
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
    seed = (scenario.seed * 1_000_003 + MODEL_INIT_TAG) % (2**63)
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
        seed = int(
            np.random.SeedSequence([scenario.seed, NOISE_TAG]).generate_state(1, dtype=np.uint64)[0] >> 1
        )
        return seeded_generator(seed)
    return secure_generator()
