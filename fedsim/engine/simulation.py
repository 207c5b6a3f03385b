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
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from fedsim.engine.resources import (
    Node,
    cpus_per_worker,
    describe_cluster,
    gpu_share,
    local_nodes,
    workers_for,
)
from fedsim.engine.server import Engine, Recorder, RunSummary
from fedsim.engine.transport import WORKER_RESTARTS
from fedsim.scenario import Scenario
from fedsim.scenario.backend import BackendChoice, choose_backend
from fedsim.stopping import HANDLED, RunStopped, StopRequest


def inprocess_workers(scenario: Scenario) -> int:
    """Workers of an in-process run: ``engine.workers`` when it is an integer (the same sharding as a Ray run
    with that many workers, so the two give the same result), else 1 (one process trains as fast with one)."""
    return 1 if scenario.engine.workers == "auto" else int(scenario.engine.workers)


def backend_workers(scenario: Scenario, choice: BackendChoice) -> int:
    """How many workers the chosen backend runs. On an existing cluster (``engine.ray_address``) with
    ``engine.workers: auto`` this connects to it briefly to read its resources (:func:`probe_cluster`)."""
    if choice.name == "inprocess":
        return inprocess_workers(scenario)
    if scenario.engine.ray_address and scenario.engine.workers == "auto":
        return resolve_workers(scenario, nodes=probe_cluster(scenario))
    return resolve_workers(scenario)


def cluster_nodes() -> list[dict[str, float]]:
    """The live nodes of the Ray cluster this process is connected to, with each one's total CPUs and GPUs
    (a node started with ``--num-cpus=0``, e.g. a head kept free for the driver, counts for nothing)."""
    import ray

    return [
        {"CPU": float(node["Resources"].get("CPU", 0)), "GPU": float(node["Resources"].get("GPU", 0))}
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources")
    ]


def probe_cluster(scenario: Scenario) -> list[dict[str, float]]:
    """Connect to ``engine.ray_address`` (a driver connection, ~0.1 s once Ray is imported), read its nodes,
    disconnect. For the worker count the first progress line names before the run connects for good."""
    from fedsim.engine.ray_guard import ray_cluster

    with quiet_flower(), ray_cluster(ray_init_args(scenario)):
        return cluster_nodes()


def resolve_workers(
    scenario: Scenario, *, gpus: int | None = None, nodes: Sequence[Node] | None = None
) -> int:
    """``engine.workers`` on ``nodes`` (default: this machine, with ``gpus`` GPUs if given): see
    :func:`workers_for`."""
    return workers_for(scenario, local_nodes(gpus=gpus) if nodes is None else nodes)


def ray_init_args(scenario: Scenario) -> dict[str, Any]:
    """``ray.init`` arguments: quiet logs, no dashboard, and the existing cluster's address if one is set."""
    init_args: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "include_dashboard": False,
    }
    if scenario.engine.ray_address:
        init_args["address"] = scenario.engine.ray_address
    return init_args


def backend_config(
    scenario: Scenario, workers: int, *, gpus: int | None = None, nodes: Sequence[Node] | None = None
) -> dict[str, Any]:
    """Ray backend settings: CPU/GPU share per worker actor on ``nodes`` (default: this machine), quiet logs,
    optional existing cluster.

    Workers with ``num_gpus`` fractions below 1 share a GPU: Ray places ``1 / gpus_per_worker`` of them on each.
    """
    nodes = local_nodes(gpus=gpus) if nodes is None else nodes
    share = gpu_share(scenario, gpus=sum(node.get("GPU", 0) for node in nodes))
    return {
        "client_resources": {
            "num_cpus": cpus_per_worker(nodes, workers, share),
            "num_gpus": share,
            # a worker process that dies (killed, out of memory) is restarted and its message run again there:
            # the message carries everything the step needs (its Context included), so the result is the same
            "max_restarts": WORKER_RESTARTS,
            "max_task_retries": WORKER_RESTARTS,
        },
        "init_args": ray_init_args(scenario),
    }


class _AfterStop(logging.Filter):
    """Drops Flower's records once a stop was requested: what its threads log then (tasks in flight failed
    on purpose, their Ray workers killed, when the run stopped) is the teardown the user asked for."""

    def __init__(self, stop: StopRequest) -> None:
        super().__init__()
        self.stop = stop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.stop


@contextmanager
def quiet_flower(stop: StopRequest | None = None) -> Iterator[None]:
    """Silence Flower's INFO chatter (and its run_simulation deprecation notice) for the run's duration, and
    everything it logs after ``stop`` was requested.

    The stop filter stays on the ``flwr`` logger when the run ends stopped: Flower's worker threads may still
    log their torn-down tasks while the process exits."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logger = logging.getLogger("flwr")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    after_stop = _AfterStop(stop) if stop is not None else None
    if after_stop is not None:
        logger.addFilter(after_stop)
    try:
        yield
    finally:
        logger.setLevel(previous)
        if after_stop is not None and not stop:
            logger.removeFilter(after_stop)


def stopped_before_start(stop: StopRequest | None) -> None:
    """Raise :class:`RunStopped` (step 0, no checkpoint) when a stop was requested before the run began."""
    if stop:
        raise RunStopped(stop.signal_name or "SIGINT", step=0, checkpoint=None)


class SimulationGone(RuntimeError):
    """Raised to the ServerApp thread when Flower's simulation ended under it (interrupted, or failed)."""


class _GridUntilGone:
    """Flower's Grid for the ServerApp thread, refusing every call once the simulation has ended.

    Why: the ServerApp runs in a (non-daemon) thread of Flower's; when the main thread leaves the simulation
    early (a second Ctrl-C, a crash of the Ray runtime), nothing answers that thread's pulls any more, and it
    would wait for replies and keep the process alive. Its next Grid call raises :class:`SimulationGone`
    instead, which ends the thread."""

    def __init__(self, grid: Any, gone: threading.Event) -> None:
        self._grid, self._gone = grid, gone

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._grid, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._gone.is_set():
                raise SimulationGone("Flower's simulation has ended; the ServerApp stops")
            return attr(*args, **kwargs)

        return call


@contextmanager
def insisting_ends_simulation(
    stop: StopRequest | None, teardown: StopRequest, gone: threading.Event, end_tasks: Callable[[], Any]
) -> Iterator[None]:
    """While Flower's simulation runs in this (main) thread: the first SIGINT/SIGTERM/SIGHUP sets ``stop`` (the
    driver stops at its next safe point); the next one (the first, without ``stop``) sets ``teardown`` and
    ``gone`` and calls ``end_tasks`` (the Ray workers are killed, so tasks in flight fail at once), so the
    ServerApp thread's next Grid call raises and Flower ends the simulation; one more raises
    ``KeyboardInterrupt``.

    Why not ``KeyboardInterrupt`` at the second signal, as elsewhere: raised in Flower's main loop, it makes Flower
    shut Ray down under tasks in flight, and the threads waiting for those tasks in ``ray.get`` then log
    ActorDiedError or never return (the process hangs at exit). Ended through the Grid, Flower's threads see
    their tasks fail while Ray is still up, then Flower shuts Ray down; the caller raises ``KeyboardInterrupt``
    after that."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop is not None and not stop:
            stop.set(name)
        elif not gone.is_set():
            teardown.set(name)
            gone.set()
            end_tasks()
        else:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            if h is not None:
                signal.signal(s, h)


@contextmanager
def prompt_message_pickup() -> Iterator[None]:
    """Within the block, Flower's simulation hands a message to its worker as soon as the ServerApp pushes it.

    Why: Flower's Simulation Runtime (``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``) looks
    for new messages in its LinkState every 0.1 s, so every step that sends messages waits 0.05 s on average
    and up to 0.1 s before any worker starts; a gossip run, one exchange per tick, spends most of its time
    there. The replacement does what Flower's does (every node, at most one message per look, the stop event
    checked at least every 0.1 s), but looks again at once after finding a message and is woken by the
    LinkState storing one instead of sleeping a fixed 0.1 s."""
    import inspect

    from flwr.server.superlink.fleet.vce import vce_api

    original = getattr(vce_api, "add_messages_to_queue", None)
    expected = ["state", "queue", "nodes_mapping", "f_stop"]
    if original is None or list(inspect.signature(original).parameters) != expected:
        yield  # another Flower than the locked one: keep its own loop (slower, still correct)
        return
    vce_api.add_messages_to_queue = _add_messages_to_queue_on_push
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = original


def _add_messages_to_queue_on_push(
    state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event
) -> None:
    pushed = threading.Event()
    store = state.store_message_ins

    def store_and_wake(message: Any) -> Any:
        message_id = store(message)
        pushed.set()
        return message_id

    state.store_message_ins = store_and_wake  # the InMemoryGrid stores through this very LinkState
    while not f_stop.is_set():
        pushed.clear()  # before looking: a message stored after this is found now or wakes the wait below
        found = False
        for node_id in nodes_mapping.keys():
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
                found = True
        if not found:
            pushed.wait(0.1)


@contextmanager
def sticky_actors() -> Iterator[None]:
    """Within the block, Flower's Ray backend runs a SuperNode's message on the actor that ran its last one when that
    actor is free, and sends that actor the node's Context without the gossip shard it keeps live.

    Why: Flower's actor pool (``flwr.simulation.ray_transport.ray_actor.BasicActorPool``) hands a message to any free
    actor, and the node's whole Context goes to the actor and back with every message. A gossip worker's shard
    (~10 MB for 500 nodes of the quickstart MLP) is in that Context, and an actor keeps the shard it saved live
    (``fedsim.engine.worker``): only on the same actor is it used, and there it needs no copy of the shard. What
    Flower keeps stays the authority: the actor saves the shard into the Context it sends back after every
    superstep, and an actor without the live shard (its process died and Ray restarted it and ran the message
    again) answers so, and the message is run again with the whole Context (:func:`_process_message_sticky`), so
    the results are those of a run that always sends the Context. Other families' messages only go to the same
    actor when it is free. With another Flower than the locked one (other signatures) nothing is replaced."""
    import inspect

    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    submit, process = getattr(BasicActorPool, "submit", None), getattr(RayBackend, "process_message", None)
    if (
        submit is None
        or process is None
        or list(inspect.signature(submit).parameters) != ["self", "actor_fn", "job"]
        or list(inspect.signature(process).parameters) != ["self", "message", "context"]
    ):
        yield
        return
    BasicActorPool.submit = _submit_sticky  # type: ignore[method-assign]
    RayBackend.process_message = _process_message_sticky(process)  # type: ignore[method-assign]
    try:
        yield
    finally:
        BasicActorPool.submit = submit  # type: ignore[method-assign]
        RayBackend.process_message = process  # type: ignore[method-assign]


_POOL_LOCK = threading.Lock()
_WHOLE_CONTEXT = threading.local()  # .on: this thread's next submit sends the whole Context


def _submit_sticky(pool: Any, actor_fn: Any, job: tuple[Any, Any, str, Any]) -> Any:
    """``BasicActorPool.submit``: the actor that ran the node's last message if it is free (then without the gossip
    shard it keeps live), else the one Flower's would take."""
    app_fn, message, cid, context = job
    with _POOL_LOCK:
        last = pool.__dict__.setdefault("_fedsim_last_actor", {})
        held = last.get(cid)
        at = next((i for i, a in enumerate(pool.pool) if a is held), None) if held is not None else None
        actor = pool.pool.pop() if at is None else pool.pool.pop(at)
        last[cid] = actor
    if at is not None and not getattr(_WHOLE_CONTEXT, "on", False):
        context = withhold_gossip_shard(context)
    future = actor_fn(actor, app_fn, message, cid, context)
    pool._future_to_actor[future] = actor
    return future


def _process_message_sticky(process: Callable[[Any, Any, Any], tuple[Any, Any]]) -> Callable[..., Any]:
    def process_message(backend: Any, message: Any, context: Any) -> tuple[Any, Any]:
        """``RayBackend.process_message``; a message whose actor did not hold the withheld shard runs again with the
        whole Context, and a reply's Context without the shard (an error reply) leaves Flower's as it was."""
        from fedsim.engine.messages import GOSSIP_STATE
        from fedsim.engine.worker import WITHHELD_MISS

        out, updated = process(backend, message, context)
        if out.has_error() and WITHHELD_MISS in str(out.error.reason):
            _WHOLE_CONTEXT.on = True
            try:
                out, updated = process(backend, message, context)
            finally:
                _WHOLE_CONTEXT.on = False
        if GOSSIP_STATE in context.state.array_records and GOSSIP_STATE not in updated.state.array_records:
            updated = context
        return out, updated

    return process_message


def withhold_gossip_shard(context: Any) -> Any:
    """``context`` without its gossip shard's state (marked withheld, its token kept), or itself if it holds none."""
    from flwr.app import ConfigRecord, Context, RecordDict

    from fedsim.engine.messages import GOSSIP_STATE, GOSSIP_STATE_CONFIG, LAYOUT
    from fedsim.engine.worker import GOSSIP_WITHHELD

    state = context.state
    if GOSSIP_STATE not in state.array_records:
        return context
    kept = RecordDict({k: v for k, v in state.items() if k not in (GOSSIP_STATE, GOSSIP_STATE + LAYOUT)})
    kept[GOSSIP_STATE_CONFIG] = ConfigRecord(
        {**state.config_records.get(GOSSIP_STATE_CONFIG, {}), GOSSIP_WITHHELD: True}
    )
    return Context(
        run_id=context.run_id, node_id=context.node_id, node_config=context.node_config, state=kept,
        run_config=context.run_config, series_id=context.series_id,
    )  # fmt: skip


@contextmanager
def quiet_actor_termination() -> Iterator[None]:
    """Within the block Flower ends its worker actors without task retries.

    Flower ends each actor with ``actor.terminate.remote()``, whose ``exit_actor`` Ray counts as a failed task; with
    the retries the worker actors are given (``WORKER_RESTARTS``, so a dead worker's message runs again) every run
    ended with one ``(raylet) Task WorkerActor.terminate failed. There are 3 retries remaining ...`` line per
    worker. The termination is sent with ``max_task_retries=0`` instead. With another Flower than the locked one
    (another signature) nothing is replaced."""
    import inspect

    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    original = getattr(BasicActorPool, "terminate_all_actors", None)
    if original is None or list(inspect.signature(original).parameters) != ["self"]:
        yield
        return

    def terminate_all_actors(pool: Any) -> None:
        for actor in pool.pool:
            actor.terminate.options(max_task_retries=0).remote()

    BasicActorPool.terminate_all_actors = terminate_all_actors  # type: ignore[method-assign]
    try:
        yield
    finally:
        BasicActorPool.terminate_all_actors = original  # type: ignore[method-assign]


@contextmanager
def driver_threads(scenario: Scenario) -> Iterator[None]:
    """This process (the driver) uses one torch thread while the run's workers are on this machine's cores.

    The workers take every core; the driver's tensor work between their replies (aggregation, gossip's coordinator,
    evaluation) is many small operations, and with torch's default of a thread per core each one waits for a thread
    the workers have taken (gossip's coordinator step: ~35 ms a superstep with 2 threads, under 1 ms with 1, on a
    busy 2-core machine). With ``engine.ray_address`` the workers are elsewhere and the driver keeps its threads."""
    from fedsim.engine.inprocess import torch_threads

    if scenario.engine.ray_address:
        yield
        return
    with torch_threads(1):
        yield


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
        scenario,
        recorder,
        expected_workers=workers,
        on_round=on_round,
        privacy=privacy,
        stop=stop,
        resume=resume,
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
    """Run ``scenario`` end to end in Flower's Ray simulation and return the engine's summary.

    Ray is started (or connected to) by :func:`fedsim.engine.ray_guard.ray_cluster`, which keeps ``stop``'s
    signal handling, shuts the cluster down however the run ends, and reaps it if this process is killed. A
    stop requested while Ray starts ends ``ray.init`` and raises :class:`RunStopped` (step 0, no checkpoint)
    before any worker is created; during the simulation see :func:`insisting_ends_simulation`. When the
    ServerApp ends with an exception (``RunStopped`` included), the tasks still in flight are failed at once
    rather than waited for."""
    import ray  # noqa: F401  (first, in this thread: the modules below import it too)
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from fedsim.engine.background_import import BackgroundImport
    from fedsim.engine.ray_actor import light_actors
    from fedsim.engine.ray_guard import ray_cluster

    # Flower's simulation package (it loads Flower's SuperLink state) and fedsim's worker load while Ray starts
    later = BackgroundImport("flwr.simulation", "fedsim.engine.worker")
    outcome: dict[str, Any] = {}
    server_app = ServerApp()
    gone = threading.Event()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        # An exception (RunStopped included) is kept and raised in the main thread once Flower has shut Ray
        # down: raised here, Flower would re-raise it too, but only after waiting 3 s for this thread's context.
        try:
            engine = Engine(
                scenario, recorder, expected_workers=workers, on_round=on_round, privacy=privacy, stop=stop,
                resume=resume,
            )  # fmt: skip
            outcome["summary"] = engine.run(_GridUntilGone(grid, gone))
        except Exception as exc:
            outcome["error"] = exc
            if teardown:  # stopped (checkpoint written) or ended: tasks still in flight are not waited for
                end_tasks()

    ended = threading.Event()  # Flower's simulation has returned

    def end_tasks() -> None:
        """Fail the tasks in flight now, and keep failing them until Flower's simulation has returned (Ray
        creates an actor again whose worker died before the actor was up)."""

        def again() -> None:
            while not ended.wait(0.25):
                outcome["cluster"].end_tasks()

        outcome["cluster"].end_tasks()
        threading.Thread(target=again, name="fedsim-end-tasks", daemon=True).start()

    teardown = stop if stop is not None else StopRequest()  # set when the run is torn down early
    with quiet_flower(teardown):
        stopped_before_start(stop)
        with ray_cluster(ray_init_args(scenario), stop) as outcome["cluster"]:
            stopped_before_start(stop)
            later.join()
            from flwr.simulation import run_simulation

            from fedsim.engine.worker import client_app

            # on an existing cluster, the workers and their shares follow its nodes, read now it is connected
            nodes = cluster_nodes() if scenario.engine.ray_address else local_nodes()
            workers = workers_for(scenario, nodes)
            config = backend_config(scenario, workers, nodes=nodes)
            log = logging.getLogger("fedsim")
            if scenario.engine.gpus_per_worker > 0 and config["client_resources"]["num_gpus"] == 0:
                where = "in the Ray cluster" if scenario.engine.ray_address else "here"
                log.warning(
                    f"fedsim: no CUDA GPU {where}: engine.gpus_per_worker is ignored and the workers train on "
                    "the CPU"
                )
            if scenario.engine.ray_address:
                log.warning("%s", describe_cluster(scenario.engine.ray_address, nodes, workers, config))
            try:
                with (
                    insisting_ends_simulation(stop, teardown, gone, end_tasks),
                    prompt_message_pickup(),
                    light_actors(),
                    sticky_actors(),
                    quiet_actor_termination(),
                    driver_threads(scenario),
                ):
                    run_simulation(
                        server_app=server_app,
                        client_app=client_app,
                        num_supernodes=workers,
                        backend_config=config,  # type: ignore[arg-type]
                    )
            finally:
                gone.set()
                ended.set()
    error = outcome.get("error")
    if isinstance(error, SimulationGone) or (error is None and "summary" not in outcome and teardown):
        raise KeyboardInterrupt  # the user insisted: the simulation was ended without a checkpoint
    if error is not None:
        raise error
    if "summary" not in outcome:
        raise RuntimeError("the simulation ended without running the scenario (see the log above)")
    return outcome["summary"]
