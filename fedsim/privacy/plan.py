"""What a scenario's DP mechanism is, in accounting terms, and what it costs: the basis of every privacy report.

Why this module exists: ``fedsim privacy`` (before any training) and ``fedsim run`` (during and after) must
describe the same mechanism. :func:`plan_from_scenario` resolves the scenario's ``privacy`` block once: the noise
multiplier (given, or calibrated for ``target_epsilon``), the sampling rate per invocation, the number of
invocations, and the pfl-style extrapolation to a deployed cohort; :func:`spend` turns it into ε per accountant
and per round. Client level: one invocation per round (q = cohort/population). Sample level: one invocation per
local DP-SGD step of the worst-off client (``fedsim.privacy.sample_level``), ``steps_per_round`` of them a round.
Full-batch strategies (``diff2``, ``dp_gd``): one Gaussian mechanism per round on the whole data (q = 1), with σ1 on
DIFF2's restart rounds and σ2 = ``noise_ratio``·σ1 on its difference rounds (:class:`RoundSchedule`), composed as a
heterogeneous sequence (``fedsim.privacy.accounting.epsilon_of_sequence``). This package sits below the
strategies and the engine: a full-batch strategy's settings (:class:`FullBatchSettings`) and the machine's data
cache come from the caller, ``fedsim.dp_plan.scenario_plan`` for the commands and the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fedsim.errors import ConfigError
from fedsim.privacy import FULL_BATCH_STRATEGIES
from fedsim.privacy.accounting import (
    Mechanism,
    bisect_noise,
    calibrate_noise,
    curve_steps,
    epsilon,
    epsilon_curve,
    epsilon_of_sequence,
    extrapolate,
    probe_epsilon,
    sequence_curve,
)
from fedsim.privacy.sample_level import (
    ClientGroup,
    LocalSchedule,
    client_groups,
    group_epsilons,
    worst_group,
    worst_group_by,
)
from fedsim.scenario.schema import PrivacyConfig, Scenario


@dataclass(frozen=True)
class Extrapolation:
    """The deployed setting a simulation is accounted for (pfl-research ``noise_cohort_size``)."""

    cohort: int
    population: int
    mechanism: Mechanism


@dataclass(frozen=True)
class RoundSchedule:
    """A full-batch strategy's mechanisms (``diff2``, ``dp_gd``): round r is a Gaussian mechanism with q = 1 and
    noise multiplier σ1 (restart, per-example clip C1) or σ2 (difference, clip C2 per unit of step norm).

    ``kinds[r − 1]`` is round r's kind (``restart`` or ``difference``); the L2 sensitivity of the aggregate is
    clip/(clients·min_examples) (add/remove one example, client sizes public).
    """

    strategy: str
    kinds: tuple[str, ...]
    noise_multiplier1: float
    noise_multiplier2: float
    clip1: float
    clip2: float
    restart_every: int
    noise_ratio: float
    clients: int
    min_examples: int

    def sigma(self, kind: str) -> float:
        return self.noise_multiplier1 if kind == "restart" else self.noise_multiplier2

    def mechanisms(self, rounds: int | None = None) -> list[Mechanism]:
        """One ``Mechanism(σ, q = 1, steps = count)`` per kind present in the first ``rounds`` rounds."""
        kinds = self.kinds[: len(self.kinds) if rounds is None else rounds]
        return [
            Mechanism(self.sigma(k), 1.0, kinds.count(k)) for k in ("restart", "difference") if k in kinds
        ]


@dataclass(frozen=True)
class PrivacyPlan:
    """A scenario's DP mechanism, resolved.

    ``mechanism`` is what the simulation runs (client level: σ, q = cohort/population, T = rounds); with
    ``extrapolated`` the same noise on the mean is accounted for the deployed cohort and population as well.
    Sample level: ``mechanism`` is one DP-SGD step of the worst-off clients (``worst_group``; ``groups`` lists all),
    composed over ``steps_per_round`` local steps a round; ``cohort`` is that client's expected batch and
    ``population`` its number of examples.
    """

    config: PrivacyConfig
    mechanism: Mechanism
    cohort: int
    population: int
    calibrated: bool
    extrapolated: Extrapolation | None = None
    steps_per_round: int = 1
    groups: tuple[ClientGroup, ...] = ()
    worst_group: ClientGroup | None = None
    worst_by_accountant: Mapping[str, ClientGroup] | None = None
    """Sample level: the least protected group by each accountant at the planned rounds (they can disagree).
    Every ε reported is the largest over ``groups`` at its own number of rounds (``spend_rounds``): the worst
    group can change from round to round."""
    schedule: RoundSchedule | None = None
    """Full-batch strategies: the per-round mechanisms actually accounted (``mechanism`` then holds σ1, q = 1
    and the number of rounds, for display)."""

    @property
    def rounds(self) -> int:
        """Federated rounds the plan covers."""
        return self.mechanism.steps // self.steps_per_round

    def mechanism_after(self, rounds: int) -> Mechanism:
        """The mechanism composed over the first ``rounds`` rounds (what a stopped run spent)."""
        return replace(self.mechanism, steps=rounds * self.steps_per_round)

    @property
    def accountants(self) -> tuple[str, ...]:
        """The accountants to report, in the scenario's order (the first one calibrates)."""
        return tuple(self.config.accountants)

    @property
    def noise_multiplier(self) -> float:
        return self.mechanism.noise_multiplier


@dataclass(frozen=True)
class FullBatchSettings:
    """What a full-batch strategy (``diff2``, ``dp_gd``) runs, in accounting terms: the inputs of its
    :class:`RoundSchedule` besides σ1 and the partition. The strategy gives them
    (``strategies.diff2.Diff2Strategy.privacy_settings``, its validated ``strategy.args``); the privacy package
    does not import the strategies, so the caller passes them (``fedsim.dp_plan.scenario_plan``).

    ``restart_every``: T, round r restarts when (r − 1) mod T == 0 (T = 1: every round, DP-GD); ``clip1``/``clip2``:
    the per-example clips of restart and difference rounds; ``noise_ratio``: σ2/σ1.
    """

    restart_every: int
    clip1: float
    clip2: float
    noise_ratio: float

    def kind(self, round: int) -> str:
        """``restart`` when (round − 1) mod T == 0, else ``difference`` (as ``Diff2Config.kind``)."""
        return "restart" if (round - 1) % self.restart_every == 0 else "difference"


def scenario_client_sizes(scenario: Scenario, build: Callable[[], Any] | None = None) -> list[int]:
    """Every client's number of training examples: without the examples where the dataset allows
    (``fedsim.data.sizes``), else from ``build()`` (the caller's ``FederatedData``, e.g. through the machine's
    data cache) or, without it, from the partition built here (``fedsim.data.load_federated_data``, no cache)."""
    from fedsim.data.sizes import client_sizes  # imported here: client-level plans need no data

    return [int(n) for n in client_sizes(scenario, build=build)]


def plan_from_scenario(
    scenario: Scenario,
    client_sizes: Sequence[int] | None = None,
    *,
    full_batch: FullBatchSettings | None = None,
    build: Callable[[], Any] | None = None,
) -> PrivacyPlan:
    """Resolve ``scenario.privacy`` (which must be set) into a :class:`PrivacyPlan`.

    Callers above the strategies resolve a scenario's plan with ``fedsim.dp_plan.scenario_plan``,
    which gives ``full_batch`` for the full-batch strategies.

    Args:
        client_sizes: (sample level, full batch) every client's number of training examples; when None they are
            computed from the scenario (:func:`scenario_client_sizes`: without building the examples where
            possible, else from ``build()``).
        full_batch: the strategy's settings, required when ``strategy.name`` is ``diff2`` or ``dp_gd`` (and only
            then).
        build: the scenario's ``FederatedData`` when the sizes need the examples (default: built here, no cache).

    Raises:
        ConfigError: naming the field, for settings that cannot be accounted (e.g. an unreachable target ε,
            a sampling an accountant cannot handle).
        ValueError: ``full_batch`` missing for a full-batch strategy, or given for another one.
    """
    cfg = scenario.privacy
    if cfg is None:
        raise ConfigError("privacy", "set (a mapping with at least `level`) to plan DP", None)
    if scenario.strategy.name in FULL_BATCH_STRATEGIES:
        return _full_batch_plan(scenario, cfg, client_sizes, full_batch, build)
    if full_batch is not None:
        raise ValueError(
            f"plan_from_scenario: full_batch settings given for strategy {scenario.strategy.name!r}, which is "
            f"not a full-batch strategy ({', '.join(FULL_BATCH_STRATEGIES)})"
        )
    if cfg.level == "sample":
        return _sample_level_plan(scenario, cfg, client_sizes, build)
    cohort, population = scenario.strategy.clients_per_round, scenario.population.clients
    sampling, accountants = cfg.sampling, tuple(cfg.accountants)
    steps = scenario.rounds

    def mech(sigma: float, s: int, n: int) -> Mechanism:
        m = Mechanism(noise_multiplier=sigma, sample_rate=s / n, steps=steps, sampling=sampling, population=n)
        m.validate()
        return m

    deployed = cfg.deployed_cohort is not None and cfg.deployed_population is not None
    sigma = cfg.sigma_given
    calibrated = sigma is None
    if sigma is None:
        assert cfg.target_epsilon is not None
        s_cal, n_cal = (cfg.deployed_cohort, cfg.deployed_population) if deployed else (cohort, population)
        sigma_cal = calibrate_noise(
            accountants[0],
            target_epsilon=cfg.target_epsilon,
            delta=cfg.delta,
            sample_rate=s_cal / n_cal,
            steps=steps,
            sampling=sampling,
            population=n_cal,
        )
        # with extrapolation the target holds for the deployed cohort; the simulation keeps the same noise on
        # the mean, so its own σ is smaller by s/s'
        sigma = sigma_cal * cohort / s_cal
    extra = None
    if deployed:
        assert cfg.deployed_cohort is not None and cfg.deployed_population is not None
        sigma_d, _ = extrapolate(
            sigma,
            simulated_cohort=cohort,
            deployed_cohort=cfg.deployed_cohort,
            deployed_population=cfg.deployed_population,
        )
        extra = Extrapolation(
            cfg.deployed_cohort,
            cfg.deployed_population,
            mech(sigma_d, cfg.deployed_cohort, cfg.deployed_population),
        )
    plan = PrivacyPlan(
        config=cfg,
        mechanism=mech(sigma, cohort, population),
        cohort=cohort,
        population=population,
        calibrated=calibrated,
        extrapolated=extra,
    )
    return plan


def _sample_level_plan(
    scenario: Scenario,
    cfg: PrivacyConfig,
    client_sizes: Sequence[int] | None,
    build: Callable[[], Any] | None,
) -> PrivacyPlan:
    """DP-SGD on every client: the worst group of clients, σ given or calibrated so that group meets the target."""
    if client_sizes is None:
        client_sizes = scenario_client_sizes(scenario, build)
    groups = client_groups(client_sizes, scenario.client.batch_size)
    if not groups:
        raise ConfigError("data", "a partition in which some client has training examples", "none has")
    epochs, rounds, delta, first = scenario.client.epochs, scenario.rounds, cfg.delta, cfg.accountants[0]
    sigma = cfg.sigma_given
    calibrated = sigma is None
    if sigma is None:
        assert cfg.target_epsilon is not None

        def worst_epsilon(s: float) -> float:
            if first == "rdp":
                return max(group_epsilons(groups, s, delta, epochs=epochs, rounds=rounds))
            return max(epsilon(first, g.mechanism(s, epochs=epochs, rounds=rounds), delta) for g in groups)

        sigma = bisect_noise(worst_epsilon, target_epsilon=cfg.target_epsilon, accountant=first)
    worst = worst_group(groups, sigma, delta, epochs=epochs, rounds=rounds)
    by_accountant = {
        a: worst if a == "rdp" else worst_group_by(a, groups, sigma, delta, epochs=epochs, rounds=rounds)
        for a in cfg.accountants
    }
    return PrivacyPlan(
        config=cfg,
        mechanism=worst.mechanism(sigma, epochs=epochs, rounds=rounds),
        cohort=LocalSchedule(worst.min_examples, scenario.client.batch_size).expected_batch_size,
        population=worst.min_examples,
        calibrated=calibrated,
        steps_per_round=epochs * worst.steps_per_epoch,
        groups=tuple(groups),
        worst_group=worst,
        worst_by_accountant=by_accountant,
    )


_SIGMA_LIMIT = 1000.0
"""The largest σ1 a full-batch plan calibrates to (beyond it the target ε is reported unreachable)."""


def _full_batch_plan(
    scenario: Scenario,
    cfg: PrivacyConfig,
    client_sizes: Sequence[int] | None,
    settings: FullBatchSettings | None,
    build: Callable[[], Any] | None,
) -> PrivacyPlan:
    """DIFF2-GD / DP-GD with sample-level DP: σ1 given (``privacy.noise_multiplier``) or calibrated so that the
    whole run's sequence of mechanisms meets ``privacy.target_epsilon`` by the first accountant (bisection on σ1
    with σ2/σ1 fixed at ``settings.noise_ratio``, the strategy's validated ``strategy.args``)."""
    name = scenario.strategy.name
    if cfg.level != "sample":
        raise ConfigError(
            "privacy.level",
            f"'sample' with strategy {name} (it protects one example: per-example clipping, noise on the sum)",
            cfg.level,
        )
    if cfg.clip != PrivacyConfig.model_fields["clip"].default:  # (fields_set does not survive CLI overrides)
        keys = "clip" if name == "dp_gd" else "clip1 and clip2"
        raise ConfigError(
            "privacy.clip",
            f"unset (left at 1.0) with strategy {name} (the clip is strategy.args.{keys})",
            cfg.clip,
        )
    args = scenario.strategy.args
    given = [k for k in ("noise_multiplier", "noise_multiplier1", "noise_multiplier2") if k in args]
    if given:
        raise ConfigError(
            f"strategy.args.{given[0]}",
            "unset when the scenario has a privacy block (σ1 is privacy.noise_multiplier or calibrated for "
            "privacy.target_epsilon; σ2 = strategy.args.noise_ratio·σ1)",
            args[given[0]],
        )
    if settings is None:
        raise ValueError(
            f"plan_from_scenario: strategy {name!r} is full-batch: pass full_batch=FullBatchSettings (its "
            "restart period, clips and noise ratio; fedsim.dp_plan.scenario_plan gives them)"
        )
    if client_sizes is None:
        client_sizes = scenario_client_sizes(scenario, build)
    if min(client_sizes) < 1:
        raise ConfigError("data", "a partition in which every client has training examples", "one has none")
    c = settings
    ratio = float(c.noise_ratio)

    def schedule(sigma1: float) -> RoundSchedule:
        return RoundSchedule(
            strategy=name,
            kinds=tuple(c.kind(r) for r in range(1, scenario.rounds + 1)),
            noise_multiplier1=sigma1,
            noise_multiplier2=sigma1 * ratio,
            clip1=float(c.clip1),
            clip2=float(c.clip2),
            restart_every=int(c.restart_every),
            noise_ratio=ratio,
            clients=len(client_sizes),
            min_examples=int(min(client_sizes)),
        )

    first = cfg.accountants[0]
    sigma = cfg.sigma_given
    calibrated = sigma is None
    if sigma is None:
        assert cfg.target_epsilon is not None

        def eps(s: float) -> float:  # a σ too small for the accountant's grid spends "more than any target"
            return probe_epsilon(lambda x: epsilon_of_sequence(first, schedule(x).mechanisms(), cfg.delta), s)

        # Bracket by doubling first: with q = 1 a tiny σ makes the PLD/PRV grids explode, so the search only
        # evaluates σ within a factor 2 of the answer; then bisection to 0.1 % as for the other plans.
        high = 1.0
        while high < _SIGMA_LIMIT and eps(high) > cfg.target_epsilon:
            high = min(2 * high, _SIGMA_LIMIT)
        low = max(high / 2, 1e-3)
        while low > 1e-3 and eps(low) <= cfg.target_epsilon:
            high, low = low, max(low / 2, 1e-3)
        sigma = bisect_noise(
            eps, target_epsilon=cfg.target_epsilon, accountant=first, sigma_min=low, sigma_max=high
        )
    sched = schedule(sigma)
    for m in sched.mechanisms():
        m.validate()
    return PrivacyPlan(
        config=cfg,
        mechanism=Mechanism(sigma, 1.0, scenario.rounds),
        cohort=len(client_sizes),
        population=len(client_sizes),
        calibrated=calibrated,
        schedule=sched,
    )


@dataclass(frozen=True)
class Spend:
    """ε per accountant after all rounds, and after each round of ``rounds_at``."""

    epsilon: dict[str, float]
    rounds_at: list[int]
    curve: dict[str, list[float]]


def spend(
    mechanism: Mechanism,
    delta: float,
    accountants: tuple[str, ...],
    *,
    max_points: int = 100,
    steps_per_round: int = 1,
) -> Spend:
    """ε of ``mechanism`` by each accountant: the total and a curve over (at most ``max_points``) rounds of
    ``steps_per_round`` invocations each."""
    at = curve_steps(mechanism.steps // steps_per_round, max_points)
    at_steps = [r * steps_per_round for r in at]
    curve = {a: _coarse_curve(a, mechanism, delta, at_steps) for a in accountants}
    total = {
        a: (curve[a][-1] if at_steps and at_steps[-1] == mechanism.steps else epsilon(a, mechanism, delta))
        for a in accountants
    }
    return Spend(epsilon=total, rounds_at=at, curve=curve)


_FINE_CURVE_POINTS = {"rdp": 100, "prv": 10, "pld": 10}
"""Points computed exactly per accountant; prv costs ~0.08 s a point and pld ~0.04 s at 10 000 steps (the last
point, exact, ~0.5 s each), rdp microseconds. Ten points keep ``fedsim privacy`` of 10 000 rounds within seconds
(``bench/privacy_cli.py``); the curve stays an upper bound between them."""


def _coarse_curve(accountant: str, mech: Mechanism, delta: float, at_steps: list[int]) -> list[float]:
    """ε at every count of ``at_steps``; beyond ``_FINE_CURVE_POINTS`` each point takes the value of the next
    computed one (ε only grows with steps, so every point stays an upper bound; the last one is exact)."""
    keep = _FINE_CURVE_POINTS.get(accountant, len(at_steps))
    if len(at_steps) <= keep:
        return epsilon_curve(accountant, mech, delta, at_steps)
    idx = [-(-i * len(at_steps) // keep) - 1 for i in range(1, keep + 1)]  # ends at the last point
    computed = epsilon_curve(accountant, mech, delta, [at_steps[i] for i in idx])
    out, j = [], 0
    for i in range(len(at_steps)):
        while idx[j] < i:
            j += 1
        out.append(computed[j])
    return out


def spend_schedule(
    schedule: RoundSchedule, delta: float, accountants: tuple[str, ...], *, rounds: int, max_points: int = 50
) -> Spend:
    """ε of a full-batch strategy's first ``rounds`` rounds by each accountant: the total and a curve over (at
    most ``max_points``) rounds, each point the heterogeneous composition of the rounds so far."""
    at = curve_steps(rounds, max_points)
    prefixes = [schedule.mechanisms(r) for r in at]
    curve = {a: sequence_curve(a, prefixes, delta) for a in accountants}
    return Spend(epsilon={a: curve[a][-1] for a in accountants}, rounds_at=at, curve=curve)


def spend_rounds(plan: PrivacyPlan, rounds: int | None = None) -> Spend:
    """What ``plan`` spends over its rounds (or over the first ``rounds``), by each of its accountants."""
    if plan.schedule is not None:
        return spend_schedule(
            plan.schedule,
            plan.config.delta,
            plan.accountants,
            rounds=plan.rounds if rounds is None else rounds,
        )
    if plan.worst_by_accountant:
        return _spend_per_group(plan, plan.rounds if rounds is None else rounds)
    mech = plan.mechanism if rounds is None else plan.mechanism_after(rounds)
    return spend(mech, plan.config.delta, plan.accountants, steps_per_round=plan.steps_per_round)


def _spend_per_group(plan: PrivacyPlan, rounds: int) -> Spend:
    """Sample level: at every point of every curve, the largest of the groups' ε by that accountant after that
    many federated rounds. Each group's ε bounds its own clients', so the maximum is the run's guarantee; the
    worst group can change from one round to the next (fewer, larger-q steps against more, smaller-q ones), so
    no single group's curve will do. No group is skipped: with q = 1/s and s·rounds·epochs steps, no group has
    both fewer steps and a smaller q than another (the per-point totals are cached per process)."""
    assert plan.worst_group is not None
    epochs = plan.steps_per_round // plan.worst_group.steps_per_epoch
    curve, total = {}, {}
    rounds_at: list[int] = []
    for a in plan.accountants:
        parts = [
            spend(
                g.mechanism(plan.noise_multiplier, epochs=epochs, rounds=rounds),
                plan.config.delta,
                (a,),
                steps_per_round=epochs * g.steps_per_epoch,
            )
            for g in plan.groups
        ]
        rounds_at = parts[0].rounds_at  # curve_steps(rounds) for every group
        curve[a] = [max(p.curve[a][i] for p in parts) for i in range(len(rounds_at))]
        total[a] = max(p.epsilon[a] for p in parts)
    return Spend(epsilon=total, rounds_at=rounds_at, curve=curve)


def plan_and_spend(
    scenario: Scenario,
    client_sizes: Sequence[int] | None = None,
    *,
    full_batch: FullBatchSettings | None = None,
    build: Callable[[], Any] | None = None,
) -> tuple[PrivacyPlan, Spend]:
    """The scenario's resolved DP plan (:func:`plan_from_scenario`, same arguments) and what it spends (the run's
    curve and totals)."""
    plan = plan_from_scenario(scenario, client_sizes, full_batch=full_batch, build=build)
    return plan, spend_rounds(plan)
