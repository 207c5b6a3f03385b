"""The engine's pre-flight: what a run checks before it starts, on top of the pure scenario checks.

Why this module exists: ``fedsim validate`` builds nothing (``fedsim.scenario.checks``), but a few problems show
only on built objects: partitions every client can use, the data's task, a connected random graph, a model without
buffers for gossip, a model the chosen trainer can train. Building those is the engine's job, so this check lives
here, above the scenario layer; ``fedsim run``, ``fedsim deploy`` and ``fedsim validate --build`` call it before
any results folder or worker exists, so each problem is still one ``ConfigError`` line before training starts.
"""

from __future__ import annotations

from fedsim.engine.cohort import select_cohort_trainer
from fedsim.engine.messages import train_config
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.errors import ConfigError
from fedsim.protocol import NOISE_MULTIPLIER_KEY
from fedsim.scenario.checks import check_scenario, check_task
from fedsim.scenario.schema import Scenario


def check_before_run(scenario: Scenario) -> None:
    """:func:`~fedsim.scenario.checks.check_scenario`, then what needs the built data, model and gossip network
    (from the machine's data cache when it holds them).

    Raises:
        ConfigError: the first problem, naming its field.
    """
    check_scenario(scenario)
    if scenario.engine.ray_address:  # an existing cluster that does not answer: one line, not minutes of retries
        from fedsim.engine.ray_guard import check_reachable

        check_reachable(scenario.engine.ray_address)
    if scenario.data.dataset.startswith("hf:"):  # needs the network: checked when the run loads it
        return
    data = build_data(scenario)
    check_task(scenario, data.task)
    if scenario.strategy.name == "gossip":
        from fedsim.engine.gossip_network import build_network

        model = build_initial_model(scenario, data)
        if any(True for _ in model.buffers()):
            raise ConfigError(
                "model", "a model without buffers (no BatchNorm) for gossip", scenario.model.name
            )
        build_network(scenario, data, model)
    # σ does not decide which trainer runs; the server sends the resolved one every round
    cfg = train_config(scenario, {NOISE_MULTIPLIER_KEY: 1.0})
    select_cohort_trainer(scenario.engine.vectorize, build_initial_model(scenario, data), cfg)
