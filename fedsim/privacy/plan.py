"""What a scenario's DP mechanism is, in accounting terms, and what it costs: the basis of every privacy report.

Why this module exists: ``fedsim privacy`` (before any training) and ``fedsim run`` (during and after) must
describe the same mechanism. :func:`plan_from_scenario` resolves the scenario's ``privacy`` block once: the noise
multiplier (given, or calibrated for ``target_epsilon``), the sampling rate per invocation, the number of
invocations, and the pfl-style extrapolation to a deployed cohort; :func:`spend` turns it into ε per accountant
and per round. Client level: one invocation per round (q = cohort/population). Sample level: one invocation per
local DP-SGD step of the worst-off client (``fedsim.privacy.sample_level``), ``steps_per_round`` of them a round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from fedsim.errors import ConfigError
from fedsim.privacy.accounting import (
    Mechanism,
    bisect_noise,
    calibrate_noise,
    curve_steps,
    epsilon,
    epsilon_curve,
    extrapolate,
)
from fedsim.privacy.sample_level import ClientGroup, LocalSchedule, client_groups, group_epsilons, worst_group
from fedsim.scenario.schema import PrivacyConfig, Scenario


@dataclass(frozen=True)
class Extrapolation:
    """The deployed setting a simulation is accounted for (pfl-research ``noise_cohort_size``)."""

    cohort: int
    population: int
    mechanism: Mechanism


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


def plan_from_scenario(scenario: Scenario, client_sizes: Sequence[int] | None = None) -> PrivacyPlan:
    """Resolve ``scenario.privacy`` (which must be set) into a :class:`PrivacyPlan`.

    ``client_sizes`` (sample level only): every client's number of training examples; when None the scenario's
    partition is built (``fedsim.engine.setup.build_data``, cached per machine) to read them.

    Raises:
        ConfigError: naming the field, for settings that cannot be accounted (e.g. an unreachable target ε,
            a sampling an accountant cannot handle).
    """
    cfg = scenario.privacy
    if cfg is None:
        raise ConfigError("privacy", "set (a mapping with at least `level`) to plan DP", None)
    if cfg.level == "sample":
        return _sample_level_plan(scenario, cfg, client_sizes)
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
    scenario: Scenario, cfg: PrivacyConfig, client_sizes: Sequence[int] | None
) -> PrivacyPlan:
    """DP-SGD on every client: the worst group of clients, σ given or calibrated so that group meets the target."""
    if client_sizes is None:
        from fedsim.engine.setup import build_data  # builds (or reads from the cache) the partition

        data = build_data(scenario)
        client_sizes = [data.num_examples(c) for c in range(scenario.population.clients)]
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
            g = worst_group(groups, s, delta, epochs=epochs, rounds=rounds)
            return epsilon(first, g.mechanism(s, epochs=epochs, rounds=rounds), delta)

        sigma = bisect_noise(worst_epsilon, target_epsilon=cfg.target_epsilon, accountant=first)
    worst = worst_group(groups, sigma, delta, epochs=epochs, rounds=rounds)
    return PrivacyPlan(
        config=cfg,
        mechanism=worst.mechanism(sigma, epochs=epochs, rounds=rounds),
        cohort=LocalSchedule(worst.min_examples, scenario.client.batch_size).expected_batch_size,
        population=worst.min_examples,
        calibrated=calibrated,
        steps_per_round=epochs * worst.steps_per_epoch,
        groups=tuple(groups),
        worst_group=worst,
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
    curve = {a: epsilon_curve(a, mechanism, delta, at_steps) for a in accountants}
    total = {
        a: (curve[a][-1] if at_steps and at_steps[-1] == mechanism.steps else epsilon(a, mechanism, delta))
        for a in accountants
    }
    return Spend(epsilon=total, rounds_at=at, curve=curve)


def spend_rounds(plan: PrivacyPlan, rounds: int | None = None) -> Spend:
    """What ``plan`` spends over its rounds (or over the first ``rounds``), by each of its accountants."""
    mech = plan.mechanism if rounds is None else plan.mechanism_after(rounds)
    return spend(mech, plan.config.delta, plan.accountants, steps_per_round=plan.steps_per_round)


def plan_and_spend(scenario: Scenario, client_sizes: Sequence[int] | None = None) -> tuple[PrivacyPlan, Spend]:
    """The scenario's resolved DP plan and what it spends (the run's curve and totals)."""
    plan = plan_from_scenario(scenario, client_sizes)
    return plan, spend_rounds(plan)
