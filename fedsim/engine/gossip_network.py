"""A scenario's gossip network: topology, protocol, schedule and initial node models, the same in every process.

Why this module exists: the engine's server and each worker rebuild the network from the scenario alone (nothing
but the scenario crosses to a worker at start-up), so every piece here is a pure function of the scenario, its
data and its model. It is the engine's (not ``fedsim.gossip``'s): it builds from the scenario with the engine's
initial model and the population's device profiles, while ``fedsim.gossip`` stays the protocol alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from fedsim.data import FederatedData, LazyFederatedData
from fedsim.engine.setup import build_initial_model
from fedsim.gossip.schedule import Schedule, profile_intervals
from fedsim.gossip.shard import GossipShard, ProtocolConfig
from fedsim.gossip.simulator import init_nodes
from fedsim.gossip.topology import build_topology, neighbour_lists
from fedsim.models import build_model
from fedsim.randomness import Stream, derive_int
from fedsim.scenario.devices import DeviceProfiles
from fedsim.scenario.schema import Scenario


@dataclass(frozen=True)
class Network:
    neighbours: list[np.ndarray]
    protocol: ProtocolConfig
    schedule: Schedule


@lru_cache(maxsize=4)
def _neighbours(kind: str, nodes: int, args_items: tuple, seed: int) -> list[np.ndarray]:
    return neighbour_lists(build_topology(kind, nodes=nodes, args=dict(args_items), seed=seed))


def topology_seed(scenario: Scenario) -> int:
    g = scenario.gossip_settings
    if g.topology.seed is not None:
        return g.topology.seed
    return derive_int(scenario.seed, Stream.TOPOLOGY, bits=32)


def build_network(scenario: Scenario, data: FederatedData | LazyFederatedData, model: nn.Module) -> Network:
    """The topology, the protocol and the event schedule of a gossip scenario.

    Raises:
        ConfigError: a bad topology (disconnected, bad arguments), client optimizer or profile setting.
    """
    g, n = scenario.gossip_settings, scenario.population.clients
    neighbours = _neighbours(
        g.topology.kind, n, tuple(sorted(g.topology.args.items())), topology_seed(scenario)
    )
    opt = scenario.client.optimizer
    protocol = ProtocolConfig(
        rule=g.rule, beta=g.beta, eps=g.eps, mode=g.mode, unit=g.unit, optimizer=opt.name,
        optimizer_args=opt.kwargs(), batch_size=scenario.client.batch_size, timeout=g.timeout,
    )  # fmt: skip
    profiles = DeviceProfiles.from_scenario(scenario)
    fixed = None
    if g.schedule == "profile":
        sizes = data.sizes()[:n]  # a client-drawn dataset's without materialising it
        work = sizes if g.unit == "epoch" else np.minimum(sizes, scenario.client.batch_size)
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        fanout = np.array([len(a) for a in neighbours]) if protocol.pushes else np.ones(n, dtype=np.int64)
        fixed = profile_intervals(
            profiles.speed,
            profiles.bandwidth,
            work=work,
            model_bytes=model_bytes,
            fanout=fanout,
            tick_s=g.tick_s,
        )
    schedule = Schedule(
        seed=scenario.seed,
        interval=tuple(g.interval),  # type: ignore[arg-type]
        fixed=fixed,
        availability=profiles.availability,
        failure=profiles.failure,
        trace=profiles.trace,
        tick_s=g.tick_s,
        nonfinite=scenario.faults.nonfinite,
        straggler=profiles.straggler,
        slowdown=profiles.slowdown,
    )
    return Network(neighbours, protocol, schedule)


def initial_models(scenario: Scenario, data: FederatedData, nodes: np.ndarray) -> dict[str, torch.Tensor]:
    """The initial models of ``nodes``, stacked: each its own (``init: independent``) or the scenario's one."""
    def build(seed: int) -> nn.Module:
        return build_model(
            scenario.model.name, scenario.model.args, input_shape=data.input_shape,
            num_classes=data.num_classes, seed=seed,
        )  # fmt: skip

    if scenario.gossip_settings.init == "independent":
        return init_nodes(build, nodes, scenario.seed)
    one = dict(build_initial_model(scenario, data).named_parameters())
    return {k: v.detach().expand(len(nodes), *v.shape).clone() for k, v in one.items()}


def build_shard(
    scenario: Scenario,
    data: FederatedData | LazyFederatedData,
    model: nn.Module,
    owned: Sequence[int] | np.ndarray,
    *,
    initial: bool = True,
) -> GossipShard:
    """The shard of ``owned`` nodes, with their initial models (``initial=False``: zeros, for a shard about to
    load a saved state; building hundreds of initial models costs seconds). A client-drawn dataset gives the
    shard its nodes' examples only (``LazyFederatedData.cohort``, addressed by population id as the whole
    population's would be), so a worker holds its own nodes' data, not every node's."""
    net = build_network(scenario, data, model)
    nodes = np.asarray(owned, dtype=np.int64)
    if isinstance(data, LazyFederatedData):
        data = data.cohort(nodes.tolist())
    if initial:
        params = initial_models(scenario, data, nodes)
    else:
        params = {k: torch.zeros((len(nodes), *v.shape), dtype=v.dtype) for k, v in model.named_parameters()}
    return GossipShard(model, data, net.neighbours, nodes, params, net.protocol, net.schedule)


def owners_by_shard(node_of: Mapping[int, Sequence[int]], nodes: int) -> tuple[list[int], np.ndarray]:
    """From worker -> its nodes, the worker list and each node's index in it."""
    workers = sorted(node_of)
    owner = np.full(nodes, -1, dtype=np.int64)
    for s, w in enumerate(workers):
        owner[np.asarray(node_of[w], dtype=np.int64)] = s
    return workers, owner
