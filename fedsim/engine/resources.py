"""How many Ray workers a run gets and what each asks Ray for, from the resources of the machines it runs on.

Pure functions of the scenario and a list of nodes (``{"CPU": cores, "GPU": gpus}`` each), so the sizing is
the same, and testable without Ray, for this machine (:func:`local_nodes`) and for an existing cluster (its
live nodes, read once connected: ``fedsim.engine.simulation.cluster_nodes``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from fedsim.scenario import Scenario


def cuda_devices() -> int:
    """GPUs this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


Node = Mapping[str, float]
"""One machine's resources as Ray counts them: ``{"CPU": cores, "GPU": gpus}``."""


def local_nodes(*, gpus: int | None = None) -> list[dict[str, float]]:
    """This machine as the one node of a run's own Ray: its cores and CUDA GPUs."""
    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(cuda_devices() if gpus is None else gpus)}]


def gpu_share(scenario: Scenario, *, gpus: float | None = None) -> float:
    """The GPU share each worker asks Ray for: ``engine.gpus_per_worker``, or 0 where there is no GPU (this
    machine's, or the cluster's ``gpus`` in all).

    A scenario written for a GPU machine runs unchanged on a CPU-only one: its workers then train on the CPU
    (``engine.device: auto``) and the results are the same to float tolerance, only slower.
    """
    gpus = cuda_devices() if gpus is None else gpus
    return float(scenario.engine.gpus_per_worker) if gpus > 0 else 0.0


def gpu_slots(gpus: float, share: float) -> int:
    """Workers of GPU share ``share`` that one node with ``gpus`` GPUs holds: Ray keeps a share below 1 on a
    single GPU, so 0.4 fits twice per GPU (not 2.5 times)."""
    whole = int(gpus + 1e-9)
    if share >= 1:
        return int(gpus / share + 1e-9)
    return whole * int(1 / share + 1e-9) + int((gpus - whole) / share + 1e-9)


def workers_that_fit(nodes: Sequence[Node], cpus: int, share: float) -> int:
    """Workers of ``cpus`` CPUs and GPU share ``share`` the nodes hold at once (Ray places each whole on one
    node)."""
    total = 0
    for node in nodes:
        fit = int(node.get("CPU", 0) // cpus)
        total += min(fit, gpu_slots(node.get("GPU", 0), share)) if share > 0 else fit
    return total


def workers_for(scenario: Scenario, nodes: Sequence[Node]) -> int:
    """``engine.workers`` on ``nodes``: an integer as given; ``auto`` = one per GPU share when sharing GPUs
    (per node: :func:`gpu_slots`), else one per CPU, over all the nodes."""
    eng = scenario.engine
    if eng.workers != "auto":
        return int(eng.workers)
    share = gpu_share(scenario, gpus=sum(node.get("GPU", 0) for node in nodes))
    if share > 0:
        return max(1, sum(gpu_slots(node.get("GPU", 0), share) for node in nodes))
    return max(1, int(sum(node.get("CPU", 0) for node in nodes)))


def cpus_per_worker(nodes: Sequence[Node], workers: int, share: float) -> int:
    """Each worker's CPU share (Ray ``num_cpus``): the most that still places all ``workers`` at once across
    ``nodes``; when they cannot all be placed at once, the CPUs divided evenly (at least 1). On one machine
    this is ``cores // workers``."""
    most = int(max((node.get("CPU", 0) for node in nodes), default=1))
    for cpus in range(most, 0, -1):
        if workers_that_fit(nodes, cpus, share) >= workers:
            return cpus
    return max(1, int(sum(node.get("CPU", 0) for node in nodes) // max(1, workers)))


def describe_cluster(address: str, nodes: Sequence[Node], workers: int, config: Mapping[str, Any]) -> str:
    """The progress line of a run on an existing cluster: its resources and what each worker gets."""
    cpus = sum(node.get("CPU", 0) for node in nodes)
    gpus = sum(node.get("GPU", 0) for node in nodes)
    res = config["client_resources"]
    each = f"{res['num_cpus']} CPU" + (f" and {res['num_gpus']:g} GPU" if res["num_gpus"] else "")
    return (
        f"Ray cluster at {address}: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs, "
        f"{gpus:g} GPUs; {workers} worker{'s' if workers != 1 else ''} of {each} each"
    )
