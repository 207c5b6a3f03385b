"""FedAvg, asynchronous FedAvg, FedBuff and FedFix as one event schedule on an integer virtual clock.

Why this module exists: Fraboni et al. show that these schemes are all one rule,

    θ_{n+1} = θ_n + η_g · Σ_{i ∈ S_n} d_i · (local(θ_{ρ_i(n)}) − θ_{ρ_i(n)}),

and differ only in *when* the server steps, *who* is in S_n and the fixed weights d_i. The schedule does not
depend on what clients learn: given every client's duration it is a pure function of the clock. So it is
computed here, Ray-free and testable with the paper's numbers, and the engine (``fedsim.engine.event_loop``)
executes it: the clients a step (re)starts are trained together, from the model version current at that step,
and their results are held until the step at which they arrive.

Time is in integer ticks (``TICKS_PER_SECOND`` per virtual second): with floats, a duration that is an exact
multiple of FedFix's window is misplaced by rounding (the spec's pitfall). Events at the same tick are taken in
client order; a run stops after the first server step at or past the horizon, or after ``max_steps`` steps.

Rules (``strategy.name`` and ``strategy.args``; every rule also takes ``weights``, ``data`` or ``uniform`` p_i, and
``horizon_s``, a virtual-time limit, ``rounds`` staying the limit on server steps):

* ``fedfix`` (``window_s`` Δt): steps at t_n = (n+1)·Δt with every client returned by then; d_i = ⌈τ_i/Δt⌉·p_i.
* ``async_fedavg`` (``variant`` ``weight`` | ``identical``): a step per returning client; d_i = p_i·τ_i·Σ_j 1/τ_j
  (``weight``) or 1 (``identical``).
* ``fedbuff`` (``buffer`` c): a step when c clients have returned; d_i = 1/c.
* ``fedavg_sync`` (``deadline_s``, ``over_selection``): a cohort of ⌈K·(1+o)⌉ starts together; the step comes when
  K have returned, or everyone has, or at the deadline; stragglers are cancelled (dropped); d_i = p_i / Σ_{S_n} p_j.

A client in S_n restarts at the step from θ_{n+1} (all clients stay busy). A client that fails is seen at its
would-be return, counted as dropped at the next step and restarted there; an offline client is not started and is
tried again at the next step.

References:
    Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for Federated Optimization with Asynchronous and
    Heterogeneous Clients Updates", JMLR 2023, arXiv 2206.10189 (the framework, FedFix, the F-X profile);
    Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022, arXiv 2106.06639
    (FedBuff); Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", 2019, arXiv 1903.03934 (async FedAvg).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fedsim.errors import ConfigError
from strategies.base import AggregateResult, Params
from strategies.fedavg import FedAvg
from strategies.server_optimizers import build_server_optimizer

TICKS_PER_SECOND = 1_000_000
"""Virtual-clock resolution: one tick is a microsecond."""


def to_ticks(seconds: float) -> int:
    """Seconds to ticks, rounded to the nearest tick (at least one: nothing takes no time)."""
    return max(1, round(float(seconds) * TICKS_PER_SECOND))


def f_x_durations(clients: int, x: float) -> list[float]:
    """The paper's deterministic "F-X" profile: τ_i = 1 − i·(X/100)/(M−1) seconds (client 0 slowest)."""
    if clients == 1:
        return [1.0]
    return [1.0 - i * (x / 100.0) / (clients - 1) for i in range(clients)]


@dataclass(frozen=True)
class Dispatch:
    """One client's local run: started at ``start`` from model ``version``, back at ``arrive`` (ticks)."""

    cid: int
    version: int
    start: int
    arrive: int
    failed: bool = False


@dataclass(frozen=True)
class Step:
    """Server step ``index`` at ``tick``: θ_index → θ_index+1 from ``arrivals`` (weights ``weights``).

    ``failed``: runs that came back failed since the last step; ``cancelled``: stragglers of a synchronous round
    (both dropped). ``dispatched``: the local runs this step starts, from version ``index + 1``.
    """

    index: int
    tick: int
    arrivals: tuple[Dispatch, ...]
    weights: tuple[float, ...]
    failed: tuple[Dispatch, ...]
    cancelled: tuple[Dispatch, ...]
    dispatched: tuple[Dispatch, ...]

    @property
    def dropped(self) -> list[int]:
        """Clients whose run this step does not use."""
        return [d.cid for d in (*self.failed, *self.cancelled)]

    @property
    def staleness(self) -> list[int]:
        """n − ρ_i(n) for every client in S_n."""
        return [self.index - a.version for a in self.arrivals]


@dataclass(frozen=True)
class Rule:
    """When a scheme steps and with which weights; see the module docstring."""

    name: str
    window: int = 0  # fedfix: Δt in ticks
    buffer: int = 1  # fedbuff: c (async: 1)
    variant: str = "weight"  # async_fedavg
    cohort: int = 0  # fedavg_sync: K
    over_selection: float = 0.0  # fedavg_sync
    deadline: int | None = None  # fedavg_sync, ticks after the round starts

    @property
    def on_arrival(self) -> bool:
        return self.name in ("async_fedavg", "fedbuff")


RULE_NAMES = ("fedfix", "async_fedavg", "fedbuff", "fedavg_sync")


def make_rule(name: str, args: Mapping[str, Any], *, clients_per_round: int, population: int) -> Rule:
    """The rule for ``strategy.name`` and ``strategy.args``, validated (errors name ``strategy.args.<key>``)."""
    allowed = {
        "fedfix": {"window_s"},
        "async_fedavg": {"variant"},
        "fedbuff": {"buffer"},
        "fedavg_sync": {"deadline_s", "over_selection"},
    }[name] | {"weights", "horizon_s"}
    for key in args:
        if key not in allowed:
            raise ConfigError(f"strategy.args.{key}", f"one of {', '.join(sorted(allowed))} for {name}", args[key])
    if args.get("weights", "data") not in ("data", "uniform"):
        raise ConfigError("strategy.args.weights", "'data' (p_i ∝ examples) or 'uniform' (p_i = 1/M)", args["weights"])

    def positive(key: str, default: float | None) -> float | None:
        value = args.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ConfigError(f"strategy.args.{key}", "a positive number", value)
        return float(value)

    if name == "fedfix":
        return Rule(name, window=to_ticks(positive("window_s", 1.0)))  # type: ignore[arg-type]
    if name == "async_fedavg":
        variant = args.get("variant", "weight")
        if variant not in ("weight", "identical"):
            raise ConfigError("strategy.args.variant", "'weight' or 'identical'", variant)
        return Rule(name, variant=variant)
    if name == "fedbuff":
        c = args.get("buffer", 10)
        if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= population:
            raise ConfigError("strategy.args.buffer", f"an integer between 1 and population.clients ({population})", c)
        return Rule(name, buffer=c)
    over = args.get("over_selection", 0.0)
    if isinstance(over, bool) or not isinstance(over, int | float) or not 0 <= over < math.inf:
        raise ConfigError("strategy.args.over_selection", "a number >= 0 (0.3 = select 30% more)", over)
    deadline = positive("deadline_s", None)
    return Rule(
        name,
        cohort=clients_per_round,
        over_selection=float(over),
        deadline=None if deadline is None else to_ticks(deadline),
    )


def client_weights(rule: Rule, p: Sequence[float], durations: Sequence[int]) -> list[float]:
    """d_i of every client for the schemes whose weights are fixed (all but ``fedavg_sync``, which normalises p
    over each step's arrivals)."""
    if rule.name == "fedfix":
        return [math.ceil(t / rule.window) * pi for pi, t in zip(p, durations, strict=True)]
    if rule.name == "async_fedavg":
        if rule.variant == "identical":
            return [1.0] * len(p)
        inv = sum(1.0 / t for t in durations)
        return [pi * t * inv for pi, t in zip(p, durations, strict=True)]
    if rule.name == "fedbuff":
        return [1.0 / rule.buffer] * len(p)
    return list(p)


@dataclass
class EventSchedule:
    """The server steps of ``rule`` over a population, one at a time (:meth:`steps`).

    Args:
        rule: the scheme.
        p: p_i of every client (sums to 1).
        durations: every client's local run in ticks (τ_i).
        online: whether client ``cid`` is available at ``tick`` (default: always).
        fails: whether the run client ``cid`` starts at ``tick`` will fail (default: never).
        horizon: stop after the first step at or past this tick (None: no limit).
        max_steps: stop after this many steps.
        pick: chooses a synchronous cohort of ``k`` among the online clients (default: the first k).
    """

    rule: Rule
    p: Sequence[float]
    durations: Sequence[int]
    online: Callable[[int, int], bool] = lambda cid, tick: True
    fails: Callable[[int, int], bool] = lambda cid, tick: False
    horizon: int | None = None
    max_steps: int = 10**9
    pick: Callable[[Sequence[int], int, int], Sequence[int]] = lambda online, k, step: list(online)[:k]
    d: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.d = client_weights(self.rule, self.p, self.durations)

    def _launch(self, cids: Sequence[int], tick: int, version: int) -> tuple[list[Dispatch], list[int]]:
        started, offline = [], []
        for cid in cids:
            if not self.online(cid, tick):
                offline.append(cid)
                continue
            started.append(Dispatch(cid, version, tick, tick + self.durations[cid], self.fails(cid, tick)))
        return started, offline

    def initial(self) -> tuple[list[Dispatch], list[int]]:
        """The runs started at tick 0 (from version 0) and the clients found offline."""
        if self.rule.name == "fedavg_sync":
            return self._sync_cohort(0, 0)
        return self._launch(list(range(len(self.p))), 0, 0)

    def _sync_cohort(self, tick: int, version: int) -> tuple[list[Dispatch], list[int]]:
        k = min(len(self.p), math.ceil(self.rule.cohort * (1 + self.rule.over_selection)))
        online = [c for c in range(len(self.p)) if self.online(c, tick)]
        return self._launch(list(self.pick(online, k, version)), tick, version)

    def steps(self) -> Iterator[Step]:
        """Yield the schedule: first the start (index −1: the runs started at tick 0 from version 0), then every
        server step."""
        rule = self.rule
        started, waiting = self.initial()
        yield Step(-1, 0, (), (), (), (), tuple(started))
        heap = [(d.arrive, d.cid, d) for d in started]
        heapq.heapify(heap)
        buffer: list[Dispatch] = []
        n, round_start = 0, 0
        while n < self.max_steps:
            timer = self._timer(n, round_start)
            if heap and (timer is None or heap[0][0] <= timer):
                tick, _, arrival = heapq.heappop(heap)
                buffer.append(arrival)
                if not self._due_on_arrival(buffer, heap):
                    continue
            elif timer is not None:
                tick = timer
            elif buffer or waiting:  # nothing in flight: restart whoever is left a second later
                tick = max([round_start, *(a.arrive for a in buffer)]) + TICKS_PER_SECOND
            else:
                return
            taken, failed = self._take(buffer)
            cancelled = []
            if rule.name == "fedavg_sync":
                cancelled = sorted((d for _, _, d in heap), key=lambda d: d.cid)  # stragglers
                heap = []
            weights = self._weights(taken)
            version = n + 1
            if rule.name == "fedavg_sync":
                restart, waiting = self._sync_cohort(tick, version)
            else:
                restart, waiting = self._launch(
                    [a.cid for a in taken] + [d.cid for d in failed] + waiting, tick, version
                )
            buffer = []
            for d in restart:
                heapq.heappush(heap, (d.arrive, d.cid, d))
            yield Step(n, tick, tuple(taken), tuple(weights), tuple(failed), tuple(cancelled), tuple(restart))
            n, round_start = n + 1, tick
            if self.horizon is not None and tick >= self.horizon:
                return

    def _timer(self, n: int, round_start: int) -> int | None:
        if self.rule.name == "fedfix":
            return (n + 1) * self.rule.window
        if self.rule.name == "fedavg_sync" and self.rule.deadline is not None:
            return round_start + self.rule.deadline
        return None

    def _due_on_arrival(self, buffer: list[Dispatch], heap: list) -> bool:
        good = sum(not a.failed for a in buffer)
        if self.rule.on_arrival:
            return good >= self.rule.buffer
        if self.rule.name == "fedavg_sync":
            return good >= self.rule.cohort or not heap
        return False

    def _take(self, buffer: list[Dispatch]) -> tuple[list[Dispatch], list[Dispatch]]:
        taken = [a for a in buffer if not a.failed]
        if self.rule.on_arrival:
            taken = taken[: self.rule.buffer]
        return taken, [a for a in buffer if a.failed]

    def _weights(self, taken: Sequence[Dispatch]) -> list[float]:
        if self.rule.name == "fedavg_sync":
            total = sum(self.p[a.cid] for a in taken)
            return [self.p[a.cid] / total for a in taken] if total > 0 else []
        return [self.d[a.cid] for a in taken]


@dataclass(frozen=True)
class EventStrategy:
    """A scheme of the framework plus the server step: θ_{n+1} = θ_n + η_g·Σ d_i·Δ_i.

    ``server`` applies the step: its server optimizer takes the pseudo-gradient −Σ d_i·Δ_i (``sgd`` with lr η_g,
    the framework's rule; momentum or Adam as with FedOpt). ``weights``: p_i proportional to the clients'
    examples (``data``) or 1/M (``uniform``).
    """

    family: ClassVar[str] = "event"
    """The loop that runs it (``fedsim.engine.loop.FAMILIES``)."""

    rule: Rule
    server: FedAvg
    weights: str = "data"
    horizon: int | None = None
    """Stop after the first server step at or past this tick (``strategy.args.horizon_s``; None: ``rounds``)."""

    def p(self, examples: Sequence[int]) -> list[float]:
        """p_i of every client (clients without data get 0 under ``data``)."""
        if self.weights == "uniform":
            return [1.0 / len(examples)] * len(examples)
        total = float(sum(examples))
        return [n / total for n in examples]

    def schedule(self, *, examples: Sequence[int], durations: Sequence[int], **kw: Any) -> EventSchedule:
        """The event schedule for clients of these sizes and durations (ticks); ``kw`` as :class:`EventSchedule`."""
        return EventSchedule(self.rule, self.p(examples), durations, horizon=self.horizon, **kw)

    def init(self, params: Params) -> Any:
        return self.server.init(params)

    def apply(self, state: Any, params: Params, weighted_sum: Mapping[str, torch.Tensor]) -> AggregateResult:
        """One server step from Σ d_i·Δ_i."""
        return self.server.step(state, params, {k: -v.to(params[k].dtype) for k, v in weighted_sum.items()})


def make_event_strategy(name: str) -> Callable[..., EventStrategy]:
    """Registry factory for ``fedfix``, ``async_fedavg``, ``fedbuff`` and ``fedavg_sync``."""

    def factory(
        *, clients_per_round: int, args: Mapping[str, Any], server_optimizer: Mapping[str, Any], population: int
    ) -> EventStrategy:
        rule = make_rule(name, args, clients_per_round=clients_per_round, population=population)
        build_server_optimizer(dict(server_optimizer))  # errors name the field before any training
        server = FedAvg(clients_per_round=clients_per_round, server_optimizer=dict(server_optimizer))
        horizon = args.get("horizon_s")
        if horizon is not None and (
            isinstance(horizon, bool) or not isinstance(horizon, int | float) or not 0 < horizon < math.inf
        ):
            raise ConfigError("strategy.args.horizon_s", "a positive number of virtual seconds", horizon)
        return EventStrategy(
            rule, server, str(args.get("weights", "data")), None if horizon is None else to_ticks(horizon)
        )

    factory.__doc__ = f"Build the event-driven {name!r} strategy."
    return factory
