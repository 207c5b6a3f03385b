"""The scenario file as frozen, validated types.

A scenario says everything a run needs (every key is listed in ``docs/scenarios.md``). Every model
forbids unknown keys and is immutable, so a resolved scenario can be written back out and rerun unchanged.
Cross-field rules (e.g. ``clients_per_round <= population.clients``) live on :class:`Scenario`.

Numbers are numbers: a ``bool`` is never read as ``0``/``1`` (``rounds: true`` is refused) and a string is never
parsed into a number (``lr: "1e-3"`` is refused; unquoted ``1e-3`` is a float, see ``fedsim.scenario.yaml12``);
an integer is accepted where a float is expected. The arguments of nested choices (``data.args``,
``data.partitioner_args``, ``model.args``, ``gossip.topology.args``) default to ``{}``, which means "the
choice's own defaults"; ``fedsim.scenario.choices`` fills them in from the registries.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError


def _leaves(ann: Any) -> set[Any]:
    """The leaf types an annotation admits (``int | None`` -> {int, NoneType}; Literal values give their types)."""
    origin = get_origin(ann)
    if origin is Union or origin is types.UnionType:
        return set().union(*(_leaves(a) for a in get_args(ann)))
    if origin is Literal:
        return {type(a) for a in get_args(ann)}
    if origin is typing.Annotated:
        return _leaves(get_args(ann)[0])
    if origin is not None:
        return {origin}
    return {ann}


def _lax_number(value: Any, ann: Any) -> str | None:
    """The pydantic error type when ``value`` would only pass ``ann`` by lax coercion to a number, else None."""
    leaves = _leaves(ann)
    numeric = leaves & {int, float}
    if numeric and not leaves & {bool, Any, object}:
        wrong = isinstance(value, bool) or (isinstance(value, str) and str not in leaves)
        if wrong:
            return "float_type" if float in numeric else "int_type"
    if get_origin(ann) in (tuple, list) and isinstance(value, (list, tuple)):
        inner = [a for a in get_args(ann) if a is not Ellipsis] or [Any]
        for i, v in enumerate(value):
            kind = _lax_number(v, inner[min(i, len(inner) - 1)])
            if kind:
                return kind
    return None


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse what pydantic's lax mode would coerce into a number: ``true`` (-> 1) and strings (``"5"``)."""
        field = cls.model_fields.get(info.field_name or "")
        kind = None if field is None else _lax_number(value, field.annotation)
        if kind:
            raise PydanticCustomError(kind, "lax number refused")
        return value


class Distribution(_Frozen):
    """A per-client quantity drawn once per logical client: constant, log-normal, uniform or normal."""

    dist: Literal["constant", "lognormal", "uniform", "normal"] = "constant"
    value: float | None = None
    mean: float | None = None
    sigma: float | None = Field(default=None, ge=0)
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _needs(self) -> Distribution:
        need = {
            "constant": ("value",),
            "lognormal": ("mean", "sigma"),
            "normal": ("mean", "sigma"),
            "uniform": ("low", "high"),
        }[self.dist]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(
                f"a {self.dist} distribution needs {', '.join(need)}; missing {', '.join(missing)}"
            )
        if self.dist == "uniform" and self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError("a uniform distribution needs low <= high")
        return self

    def positive_problem(self) -> str | None:
        """Why some draws of this distribution would be <= 0 (speeds and bandwidths must be > 0), or None.

        ``normal`` has unbounded support: it is accepted when ``mean >= 4 sigma``, so fewer than 1 client in
        30 000 draws a value <= 0 (P(Z <= -4) = 3.2e-5); such a draw is floored at 1e-9 by the engine.
        """
        if self.dist == "constant" and not self.value > 0:  # type: ignore[operator]
            return "value > 0"
        if self.dist == "uniform" and not self.low > 0:  # type: ignore[operator]
            return "low > 0"
        if self.dist == "lognormal" and not self.mean > 0:  # type: ignore[operator]
            return "mean > 0 (the arithmetic mean of the draws)"
        if self.dist == "normal" and not (self.mean > 0 and 4 * self.sigma <= self.mean):  # type: ignore[operator]
            return "mean > 0 and sigma <= mean / 4 (so fewer than 1 client in 30 000 draws a value <= 0)"
        return None


class DataConfig(_Frozen):
    dataset: str = "digits"
    args: dict[str, Any] = Field(default_factory=dict)
    partitioner: str = "dirichlet"
    partitioner_args: dict[str, Any] = Field(default_factory=dict)
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)


class AvailabilityTrace(_Frozen):
    """Online intervals per client from a CSV file with the header ``client,start_s,end_s`` (virtual seconds).

    A client listed in the file is online exactly within its intervals; a client not listed is always online.
    """

    trace: str


class DevicesConfig(_Frozen):
    """Heterogeneity of the population; quantities are samples/s and bytes/s.

    ``profile: F-X`` replaces speed and bandwidth by the deterministic durations of Fraboni et al.:
    τ_i = 1 − i·(X/100)/(M−1) virtual seconds per local run (client 0 slowest, the fastest X% faster).
    ``failure`` is the older name of ``faults.crash`` (:class:`Scenario` keeps the two equal).
    """

    speed: Distribution = Distribution(dist="constant", value=100.0)
    bandwidth: Distribution = Distribution(dist="constant", value=1.0e7)
    availability: float | AvailabilityTrace = Field(default=1.0)
    failure: float = Field(default=0.0, ge=0.0, lt=1.0)
    profile: str | None = None

    @field_validator("availability", mode="before")
    @classmethod
    def _availability_is_a_probability(cls, v: Any) -> Any:
        ok_number = isinstance(v, int | float) and not isinstance(v, bool) and 0.0 < v <= 1.0
        ok_trace = isinstance(v, dict) and set(v) == {"trace"} and isinstance(v["trace"], str)
        if not (ok_number or ok_trace or isinstance(v, AvailabilityTrace)):
            raise ValueError(
                "must be a probability in (0, 1] (at 0 no client is ever online, so no round would train "
                f"anyone) or {{trace: <csv path>}}. Got {v!r}"
            )
        return v

    @field_validator("speed", "bandwidth")
    @classmethod
    def _positive_draws(cls, d: Distribution) -> Distribution:
        problem = d.positive_problem()
        if problem:
            raise ValueError(
                f"must be a distribution of positive values: {d.dist} needs {problem}. "
                f"Got {d.model_dump(exclude_none=True)}"
            )
        return d

    @field_validator("profile")
    @classmethod
    def _profile_is_f_x(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"F-(100|[1-9]?[0-9])(\.[0-9]+)?", v):
            raise ValueError(f"must be 'F-X' with X a percentage in [0, 100] (e.g. F-80). Got {v!r}")
        return v

    @property
    def f_x(self) -> float | None:
        """X of an ``F-X`` profile (None without one)."""
        return None if self.profile is None else float(self.profile[2:])


class PopulationConfig(_Frozen):
    clients: int = Field(default=100, ge=1)
    devices: DevicesConfig = DevicesConfig()


class StragglersConfig(_Frozen):
    """Slow clients: ``fraction`` of the population (drawn once per run from the scenario seed) whose virtual
    durations are ``slowdown`` times their profile's."""

    fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    slowdown: float = Field(default=1.0, ge=1.0, allow_inf_nan=False)


class FaultsConfig(_Frozen):
    """Faults injected into a run, the same in every strategy family (``docs/scenarios.md``, Faults).

    ``crash``: probability that a started client crashes and returns nothing (``population.devices.failure`` is
    its older name). ``nonfinite``: probability that a client's update comes back NaN (drawn per round and
    client on the worker; the update is then dropped as non-finite). ``stragglers``: slow clients.
    """

    crash: float = Field(default=0.0, ge=0.0, lt=1.0)
    nonfinite: float = Field(default=0.0, ge=0.0, lt=1.0)
    stragglers: StragglersConfig = StragglersConfig()


class ModelConfig(_Frozen):
    name: str = "mlp"
    args: dict[str, Any] = Field(default_factory=dict)


class OptimizerSpec(_Frozen):
    """A registered optimizer name and its keyword arguments (validated by the optimizer registry)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    def kwargs(self) -> dict[str, Any]:
        """The optimizer's arguments (every key but ``name``)."""
        return dict(self.model_extra or {})


class ClientConfig(_Frozen):
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=8, ge=1)
    optimizer: OptimizerSpec = OptimizerSpec(name="sgd", lr=0.05)
    optimizer_state: Literal["fresh", "persistent"] = "fresh"


class StrategyConfig(_Frozen):
    name: str = "fedavg"
    clients_per_round: int = Field(default=10, ge=1)
    args: dict[str, Any] = Field(default_factory=dict)
    server_optimizer: OptimizerSpec = OptimizerSpec(name="sgd", lr=1.0)


class PrivacyConfig(_Frozen):
    """Differential privacy of a run (``docs/privacy.md``); ``privacy: null`` means none.

    ``level: client`` protects a client's whole data (clip each client's update, noise the sum once per round);
    ``level: sample`` protects one example (DP-SGD on every client). Give ``noise_multiplier`` or
    ``target_epsilon`` (σ is then calibrated with the first accountant), not both.
    """

    level: Literal["client", "sample"] = "client"
    clip: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    per_layer: Literal["independent", "uniform", "dimension", "adaptive"] | None = None
    layer_split: Literal["uniform", "dimension"] = "uniform"
    normalize_layers: bool = False
    noise_multiplier: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    target_epsilon: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    accountants: list[Literal["rdp", "prv", "pld"]] = Field(
        default_factory=lambda: ["rdp", "prv", "pld"], min_length=1
    )
    sampling: Literal["poisson", "fixed_size"] = "poisson"
    target_quantile: float = Field(default=0.5, gt=0.0, lt=1.0)
    clip_learning_rate: float = Field(default=0.2, gt=0.0, allow_inf_nan=False)
    count_noise_multiplier: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    deployed_cohort: int | None = Field(default=None, ge=1)
    deployed_population: int | None = Field(default=None, ge=1)
    insecure_seed: bool = False
    release_diagnostics: bool = False
    """Write the run's un-privatised diagnostics (train loss, clipping statistics, counts, times) into
    ``metrics.jsonl`` and ``report.md``; the privacy report then lists them by name (``docs/privacy.md``). Off by
    default: the (ε, δ) statement covers the noised aggregates only."""

    @model_validator(mode="after")
    def _consistent(self) -> PrivacyConfig:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError(
                "give noise_multiplier or target_epsilon, not both "
                f"(got noise_multiplier={self.noise_multiplier}, target_epsilon={self.target_epsilon})"
            )
        if (self.deployed_cohort is None) != (self.deployed_population is None):
            raise ValueError("deployed_cohort and deployed_population must be given together")
        if self.deployed_cohort is not None and self.deployed_population is not None:
            if self.deployed_cohort > self.deployed_population:
                raise ValueError(
                    "deployed_cohort must be <= deployed_population "
                    f"(got {self.deployed_cohort} > {self.deployed_population})"
                )
        if len(set(self.accountants)) != len(self.accountants):
            raise ValueError(f"accountants must not repeat a name (got {self.accountants})")
        if self.level == "sample":
            self._sample_level_settings()
        return self

    def _sample_level_settings(self) -> None:
        """DP-SGD on the clients (Opacus' flat clipping, Poisson batches): client-level options do not apply."""
        client_only = {
            "per_layer": self.per_layer is not None,
            "normalize_layers": self.normalize_layers,
            "count_noise_multiplier": self.count_noise_multiplier is not None,
            "deployed_cohort": self.deployed_cohort is not None,
        }
        for name, given in client_only.items():
            if given:
                raise ValueError(
                    f"{name} applies to level 'client' only; with level 'sample' leave it unset "
                    "(DP-SGD clips every example's whole gradient)"
                )
        if self.sampling != "poisson":
            raise ValueError(
                "sampling must be 'poisson' with level 'sample' (each client's DP-SGD batches are Poisson "
                f"samples of its examples, as in Opacus). Got {self.sampling!r}"
            )

    @property
    def sigma_given(self) -> float | None:
        """σ as written (None when it is to be calibrated from ``target_epsilon``; 1.0 when neither is given)."""
        if self.target_epsilon is not None:
            return None
        return 1.0 if self.noise_multiplier is None else self.noise_multiplier


class TopologyConfig(_Frozen):
    """The gossip graph (``fedsim.gossip.topology``): ``kind`` and its arguments, e.g. ``{kind: regular, args: {k: 8}}``
    (absent arguments take the kind's own defaults); ``seed`` (default: the scenario's) draws random graphs."""

    kind: str = "regular"
    args: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = Field(default=None, ge=0)


class GossipSettings(_Frozen):
    """Decentralised gossip learning (``strategy.name: gossip``): no server model; every client is a node.

    Each node trains ``unit`` (a mini-batch of ``client.batch_size`` or an epoch) with ``client.optimizer`` at each
    of its events, sends per ``mode``, and merges per ``rule`` when its buffer holds as many models as it has
    neighbours (or after ``timeout`` ticks with a non-empty buffer). Events are ``interval`` ticks apart (uniform,
    the authors' 8..12) with ``schedule: uniform``, or from the device profiles with ``schedule: profile``
    (``⌈(work/speed + degree·model_bytes/bandwidth)/tick_s⌉`` ticks). The run lasts ``ticks``; evaluation every
    ``eval_every`` ticks. ``init: independent`` gives every node its own initial model (uncorrelated, the setting
    of the vanishing-variance problem); ``shared`` one model for all (as FL starts).
    """

    topology: TopologyConfig = TopologyConfig()
    rule: Literal["plain", "corrected"] = "corrected"
    beta: float = Field(default=0.5, ge=0.0, le=1.0)
    eps: float = Field(default=1e-4, ge=0.0, allow_inf_nan=False)
    mode: Literal["push", "pull", "push-pull"] = "push"
    unit: Literal["minibatch", "epoch"] = "minibatch"
    schedule: Literal["uniform", "profile"] = "uniform"
    interval: tuple[int, int] = (8, 12)
    tick_s: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    timeout: int = Field(default=100, ge=1)
    ticks: int = Field(default=1000, ge=1)
    eval_every: int = Field(default=50, ge=1)
    init: Literal["independent", "shared"] = "independent"

    @field_validator("interval")
    @classmethod
    def _interval_ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"must be two integers 1 <= lo <= hi. Got {list(v)}")
        return v


class EngineConfig(_Frozen):
    workers: int | str = "auto"
    backend: Literal["auto", "ray", "inprocess"] = "auto"
    """Where the workers run; ``auto`` is resolved by ``fedsim.scenario.backend.choose_backend``."""
    gpus_per_worker: float = Field(default=0.0, ge=0.0)
    vectorize: Literal["auto", "on", "off"] = "auto"
    memory_budget_mb: float | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray_address: str | None = None
    register_timeout_s: float = Field(default=120.0, gt=0)
    round_timeout_s: float = Field(default=600.0, gt=0)

    @field_validator("memory_budget_mb")
    @classmethod
    def _budget_positive(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v <= 0:
            raise ValueError(f"must be 'auto' or a number of MiB > 0. Got {v!r}")
        return v

    @field_validator("workers")
    @classmethod
    def _workers_positive(cls, v: int | str) -> int | str:
        if (isinstance(v, str) and v != "auto") or (isinstance(v, int) and v < 1):
            raise ValueError(f"must be 'auto' or an integer >= 1. Got {v!r}")
        return v


class EvaluationConfig(_Frozen):
    every: int = Field(default=1, ge=1)
    # Central evaluation on the first N examples of the test set (None: all of it): a fixed subset, the same at
    # every evaluation, for runs where evaluating every node or round on the whole set costs more than training.
    test_examples: int | None = Field(default=None, ge=1)


class OutputConfig(_Frozen):
    """Where results go and when checkpoints are written (``fedsim run --resume`` continues from the newest).

    A checkpoint is written every ``checkpoint_every`` steps (0: not by steps) and whenever
    ``checkpoint_every_s`` seconds of wall time have passed since the last one (0: not by time), when the run is
    stopped (Ctrl-C, SIGTERM) and at the end; the newest ``keep_checkpoints`` are kept."""

    dir: str = "runs"
    checkpoint_every: int = Field(default=0, ge=0)
    checkpoint_every_s: float = Field(default=60.0, ge=0.0, allow_inf_nan=False)
    keep_checkpoints: int = Field(default=3, ge=1)


def _as_dict(value: Any) -> dict[str, Any] | None:
    """A raw block as a dict of the keys it gives (a model: its set fields), or None when it is neither."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    return dict(value) if isinstance(value, dict) else None


def _probability(value: Any) -> bool:
    """A number in [0, 1) (what ``faults.crash`` accepts), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value < 1.0


class Scenario(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(default=0, ge=0)
    rounds: int = Field(default=30, ge=1)
    data: DataConfig = DataConfig()
    population: PopulationConfig = PopulationConfig()
    model: ModelConfig = ModelConfig()
    client: ClientConfig = ClientConfig()
    strategy: StrategyConfig = StrategyConfig()
    privacy: PrivacyConfig | None = None
    gossip: GossipSettings | None = None
    engine: EngineConfig = EngineConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()
    faults: FaultsConfig = FaultsConfig()

    @model_validator(mode="before")
    @classmethod
    def _crash_has_two_names(cls, data: Any) -> Any:
        """``faults.crash`` and its older name ``population.devices.failure`` hold one value: either may be given
        (the other takes its value), both only if they are equal. A value that is not a probability in [0, 1)
        is not copied, so its own field's error names it once."""
        if not isinstance(data, dict):
            return data
        population, faults = _as_dict(data.get("population", {})), _as_dict(data.get("faults", {}))
        devices = _as_dict(population.get("devices", {})) if population is not None else None
        if devices is None or faults is None:
            return data
        failure, crash = devices.get("failure"), faults.get("crash")
        if _probability(failure) and _probability(crash) and failure != crash:
            raise ValueError(
                "faults.crash and population.devices.failure (its older name) must be equal when both are "
                f"given; give faults.crash only. Got faults.crash={crash!r}, population.devices.failure={failure!r}"
            )
        if _probability(failure) and "crash" not in faults:
            return {**data, "faults": {**faults, "crash": failure}}
        if _probability(crash) and "failure" not in devices:
            assert population is not None
            return {**data, "population": {**population, "devices": {**devices, "failure": crash}}}
        return data

    @property
    def gossip_settings(self) -> GossipSettings:
        """The gossip block, or its defaults when a gossip scenario leaves it out."""
        return self.gossip or GossipSettings()

    def fingerprint(self) -> str:
        """A digest of every setting (SHA-256 of the scenario's canonical JSON): a checkpoint records it, and a
        run is resumed only with the scenario it was started with."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    @property
    def planned_rounds(self) -> int:
        """How many metrics rows after the first the run writes: ``rounds``, or for gossip (which has no rounds)
        one per evaluation after tick 0 (every ``gossip.eval_every`` ticks, and at ``gossip.ticks``)."""
        if self.strategy.name == "gossip":
            g = self.gossip_settings
            return -(-g.ticks // g.eval_every)
        return self.rounds

    @model_validator(mode="after")
    def _gossip_block_goes_with_the_gossip_strategy(self) -> Scenario:
        if self.gossip is not None and self.strategy.name != "gossip":
            raise ValueError(
                f"gossip: the gossip block needs strategy.name 'gossip' (got {self.strategy.name!r}); remove the "
                "block for a server strategy"
            )
        return self

    @model_validator(mode="after")
    def _cohort_fits_population(self) -> Scenario:
        k, n = self.strategy.clients_per_round, self.population.clients
        if k > n:
            raise ValueError(
                f"strategy.clients_per_round must be an integer between 1 and population.clients ({n}). Got {k}"
            )
        return self
