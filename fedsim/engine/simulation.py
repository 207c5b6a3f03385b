"""Run the engine on one of two backends: Flower's Simulation Runtime (Ray), or in this process.

``ray``: Flower starts one SuperNode per worker (``num_supernodes = workers``) backed by a pool of Ray actors;
the ServerApp built here runs the :class:`~fedsim.engine.server.Engine` loop in this process, so results go
straight to the run's recorder. ``inprocess`` (``fedsim.engine.inprocess``): the same Engine, ClientApp and
messages over an in-process Grid, without Ray's start-up of several seconds. ``auto`` picks one by
:func:`fedsim.scenario.backend.choose_backend`, a pure function of the scenario.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fedsim.engine.server import Engine, Recorder, RunSummary
from fedsim.scenario import Scenario
from fedsim.scenario.backend import BackendChoice, choose_backend
from fedsim.stopping import RunStopped, StopRequest


def inprocess_workers(scenario: Scenario) -> int:
    """Workers of an in-process run: ``engine.workers`` when it is an integer (the same sharding as a Ray run
    with that many workers, so the two give the same result), else 1 (one process trains as fast with one)."""
    return 1 if scenario.engine.workers == "auto" else int(scenario.engine.workers)


def backend_workers(scenario: Scenario, choice: BackendChoice) -> int:
    """How many workers the chosen backend runs."""
    return inprocess_workers(scenario) if choice.name == "inprocess" else resolve_workers(scenario)


def cuda_devices() -> int:
    """GPUs this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_share(scenario: Scenario, *, gpus: int | None = None) -> float:
    """The GPU share each worker asks Ray for: ``engine.gpus_per_worker``, or 0 on a machine without a GPU.

    A scenario written for a GPU machine runs unchanged on a CPU-only one: its workers then train on the CPU
    (``engine.device: auto``) and the results are the same to float tolerance, only slower.
    """
    gpus = cuda_devices() if gpus is None else gpus
    return float(scenario.engine.gpus_per_worker) if gpus > 0 else 0.0


def resolve_workers(scenario: Scenario, *, gpus: int | None = None) -> int:
    """``engine.workers``: an integer as given; ``auto`` = one per GPU share when sharing GPUs, else one per core."""
    eng = scenario.engine
    if eng.workers != "auto":
        return int(eng.workers)
    gpus = cuda_devices() if gpus is None else gpus
    share = gpu_share(scenario, gpus=gpus)
    if share > 0:
        return max(1, int(gpus / share))
    return max(1, os.cpu_count() or 1)


def backend_config(scenario: Scenario, workers: int, *, gpus: int | None = None) -> dict[str, Any]:
    """Ray backend settings: CPU/GPU share per worker actor, quiet logs, optional existing cluster.

    Workers with ``num_gpus`` fractions below 1 share a GPU: Ray places ``1 / gpus_per_worker`` of them on each.
    """
    cores = os.cpu_count() or 1
    init_args: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "include_dashboard": False,
    }
    if scenario.engine.ray_address:
        init_args["address"] = scenario.engine.ray_address
    return {
        "client_resources": {
            "num_cpus": max(1, cores // workers),
            "num_gpus": gpu_share(scenario, gpus=gpus),
        },
        "init_args": init_args,
    }


@contextmanager
def quiet_flower() -> Iterator[None]:
    """Silence Flower's INFO chatter (and its run_simulation deprecation notice) for the run's duration."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logger = logging.getLogger("flwr")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def simulate(
    scenario: Scenario,
    recorder: Recorder,
    *,
    on_round: Callable[[Mapping[str, Any]], None] | None = None,
    privacy: Any = None,
    backend: BackendChoice | None = None,
    stop: StopRequest | None = None,
    resume: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Run ``scenario`` end to end on ``backend`` (default: :func:`choose_backend`) and return the engine's
    summary.

    ``privacy``: the scenario's resolved ``(PrivacyPlan, Spend)`` when the caller already has it (saves a
    second calibration); ``stop``: set by signals, answered by the driver at a safe point; ``resume``: a
    checkpoint's state to continue from (``fedsim.resume``)."""
    backend = backend or choose_backend(scenario)
    run = simulate_inprocess if backend.name == "inprocess" else simulate_ray
    return run(scenario, recorder, on_round=on_round, privacy=privacy, stop=stop, resume=resume)


def simulate_inprocess(
    scenario: Scenario,
    recorder: Recorder,
    *,
    on_round: Callable[[Mapping[str, Any]], None] | None = None,
    privacy: Any = None,
    stop: StopRequest | None = None,
    resume: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Run ``scenario`` on the in-process backend: the same Engine and ClientApp, no Ray."""
    from fedsim.engine.inprocess import run_on_inprocess_grid

    workers = inprocess_workers(scenario)
    engine = Engine(
        scenario, recorder, expected_workers=workers, on_round=on_round, privacy=privacy, stop=stop, resume=resume
    )
    return run_on_inprocess_grid(
        engine.run, workers=workers, reply_deadline_s=scenario.engine.round_timeout_s
    )


def simulate_ray(
    scenario: Scenario,
    recorder: Recorder,
    *,
    on_round: Callable[[Mapping[str, Any]], None] | None = None,
    privacy: Any = None,
    stop: StopRequest | None = None,
    resume: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Run ``scenario`` end to end in Flower's Ray simulation and return the engine's summary."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedsim.engine.worker import client_app

    workers = resolve_workers(scenario)
    if scenario.engine.gpus_per_worker > 0 and gpu_share(scenario) == 0:
        logging.getLogger("fedsim").warning(
            "fedsim: no CUDA GPU here: engine.gpus_per_worker is ignored and the workers train on the CPU"
        )
    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        engine = Engine(
            scenario, recorder, expected_workers=workers, on_round=on_round, privacy=privacy, stop=stop,
            resume=resume,
        )  # fmt: skip
        try:
            outcome["summary"] = engine.run(grid)
        except RunStopped as exc:  # Flower would log it as a ServerApp failure: re-raised below instead
            outcome["stopped"] = exc

    with quiet_flower():
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=workers,
            backend_config=backend_config(scenario, workers),  # type: ignore[arg-type]
        )
    if "stopped" in outcome:
        raise outcome["stopped"]
    if "summary" not in outcome:
        raise RuntimeError("the simulation ended without running the scenario (see the log above)")
    return outcome["summary"]
