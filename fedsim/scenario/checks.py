"""What ``fedsim validate`` checks beyond the schema, without building anything.

Why this module exists: validation must be fast and pure (no data, model, graph, network or cache write), yet
catch everything that can be known from the file and this machine: registered names and their arguments, the
cross-field rules of each strategy family, the population this machine can hold, the worker count its cores can
serve, and a results folder that can be made. :func:`check_scenario` does that. The few checks that need a built
object (partition feasibility, a random graph's connectivity, the trained model's buffers) are the engine's
pre-flight (``fedsim.engine.preflight.check_before_run``), which ``fedsim run`` calls before any results folder or
worker exists, so they still fail as one ``ConfigError`` line before training starts.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

from fedsim.errors import ConfigError, UnknownNameError
from fedsim.scenario.schema import Scenario

BYTES_PER_CLIENT = 48
"""A lower bound on what every run holds per logical client, whatever its data: a partition offset and at least
one example index (``fedsim.data.Partitions``, 8 B each), a speed and a bandwidth (``DeviceProfiles``, 8 B each), an
availability draw and a client seed per round (8 B each). A population whose bound exceeds the machine's memory
cannot run; it is refused here rather than ending in a ``MemoryError`` (10^7 clients need 480 MB)."""

WORKERS_PER_CORE = 4
"""``engine.workers`` above this many per core on a local run is refused: each worker is a process (a Ray actor)
holding the model, its clients' data and its own torch threads, so beyond a few per core they only contend for
the cores and memory; ``auto`` gives one per core."""


def machine_memory_bytes() -> int:
    """Physical memory of this machine (``os.sysconf``), or 2^40 where the platform does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**40


def check_population(clients: int, *, memory: int | None = None) -> None:
    """Refuse a population this machine cannot hold (:data:`BYTES_PER_CLIENT` each)."""
    memory = machine_memory_bytes() if memory is None else memory
    most = memory // BYTES_PER_CLIENT
    if clients > most:
        raise ConfigError(
            "population.clients",
            f"at most {most} on this machine (a run holds at least {BYTES_PER_CLIENT} bytes per client and the "
            f"machine has {memory / 2**30:.1f} GiB)",
            clients,
        )


def check_workers(scenario: Scenario, *, cores: int | None = None) -> None:
    """Refuse more local workers than :data:`WORKERS_PER_CORE` per core (a Ray cluster sizes its own)."""
    workers = scenario.engine.workers
    if scenario.engine.ray_address is not None or not isinstance(workers, int):
        return
    cores = (os.cpu_count() or 1) if cores is None else cores
    if workers > WORKERS_PER_CORE * cores:
        raise ConfigError(
            "engine.workers",
            f"'auto' or at most {WORKERS_PER_CORE * cores} ({WORKERS_PER_CORE} per core; this machine has "
            f"{cores} cores)",
            workers,
        )


def check_output_root(root: str | Path, name: str, *, field: str = "output.dir") -> None:
    """The results root (and its ``<name>`` folder) must be folders or not exist yet; nothing is created."""
    for path in (Path(root), Path(root) / name):
        if path.exists() and not path.is_dir():
            raise ConfigError(
                field, f"a folder for the results (it names an existing file: {path})", str(root)
            )
    for parent in Path(root).parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(field, f"a folder for the results ({parent} is a file)", str(root))
            break


def check_scenario(scenario: Scenario) -> None:
    """Every check that needs no built object: names, arguments, cross-field rules, this machine's limits.

    A scenario object that passed is remembered (weakly, by identity), so a run that loaded its file (which
    checks) does not check it again before it starts (``fedsim.engine.preflight``); a scenario changed by an
    override is a new object and is checked anew.

    Raises:
        ConfigError: the first problem, naming its field (``UnknownNameError`` lists the known names).
    """
    if _PASSED.get(id(scenario)) is scenario:
        return
    _check_scenario(scenario)
    _PASSED[id(scenario)] = scenario


_PASSED: weakref.WeakValueDictionary[int, Scenario] = weakref.WeakValueDictionary()
"""The scenario objects that passed :func:`check_scenario` in this process (an object is frozen: it stays valid)."""


def _check_scenario(scenario: Scenario) -> None:
    # Imported here: the registries pull in torch and the data stack, which plain schema checks do not need.
    from clients.optimizers import check_optimizer_spec
    from fedsim.data.federated import dataset_task, partitioner_names, resolve_dataset_args
    from fedsim.data.partitioners import resolve_partitioner_args
    from fedsim.models.registry import resolve_model_args, vectorize_blocker
    from fedsim.scenario.backend import choose_backend
    from strategies import build_strategy
    from strategies.asynchronous import RULE_NAMES
    from strategies.server_optimizers import build_server_optimizer

    check_population(scenario.population.clients)
    check_workers(scenario)
    choose_backend(scenario)  # refuses engine.backend 'inprocess' with settings only Ray workers honour
    check_output_root(scenario.output.dir, scenario.name)
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
        from fedsim.scenario.devices import load_trace

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
    model_args = resolve_model_args(scenario.model.name, scenario.model.args)
    if scenario.client.optimizer_state != "fresh":
        raise ConfigError(
            "client.optimizer_state",
            "'fresh' in this version (per-client persistent optimizer state is not implemented yet)",
            scenario.client.optimizer_state,
        )
    d = scenario.data
    resolve_dataset_args(d.dataset, d.args)
    if d.partitioner not in partitioner_names():
        raise UnknownNameError("data.partitioner", d.partitioner, partitioner_names())
    resolve_partitioner_args(d.partitioner, d.partitioner_args)
    check_task(scenario, dataset_task(d.dataset))
    if scenario.strategy.name == "gossip":
        from fedsim.gossip.topology import check_topology_args

        t = scenario.gossip_settings.topology
        check_topology_args(t.kind, scenario.population.clients, t.args)
    blocker = vectorize_blocker(scenario.model.name, model_args)
    if scenario.engine.vectorize == "on" and blocker:
        raise ConfigError("engine.vectorize", f"'auto' or 'off' here, because {blocker}", "on")


def _check_full_batch_strategy(scenario: Scenario) -> None:
    """DIFF2-GD / DP-GD (``strategies.diff2``) use every client in every round: no cohort, no crashes (a non-finite
    contribution, ``faults.nonfinite``, is dropped and counted by the worker)."""
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
    if scenario.faults.crash != 0:  # population.devices.failure, its older name, holds the same value
        raise ConfigError(
            "faults.crash",
            f"0 for {name} (its recursion needs every client every round; population.devices.failure is the "
            "older name of faults.crash)",
            scenario.faults.crash,
        )
    if devices.availability != 1.0:
        raise ConfigError(
            "population.devices.availability",
            f"1.0 for {name} (its recursion needs every client every round)",
            devices.availability,
        )


def check_task(scenario: Scenario, task: str | None) -> None:
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
