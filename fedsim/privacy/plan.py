"""What a scenario's DP mechanism is, in accounting terms, and what it costs: the basis of every privacy report.

Why this module exists: ``fedsim privacy`` (before any training) and ``fedsim run`` (during and after) must
describe the same mechanism. :func:`plan_from_scenario` resolves the scenario's ``privacy`` block once: the noise
multiplier (given, or calibrated for ``target_epsilon``), the sampling rate per invocation, the number of
invocations, and the pfl-style extrapolation to a deployed cohort; :func:`spend` turns it into ε per accountant
and per round.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.errors import ConfigError
from fedsim.privacy.accounting import (
    Mechanism,
    calibrate_noise,
    curve_steps,
    epsilon,
    epsilon_curve,
    extrapolate,
)
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

    ``mechanism`` is what the simulation runs (σ, q = cohort/population, T = rounds); with ``extrapolated`` the
    same noise on the mean is accounted for the deployed cohort and population as well.
    """

    config: PrivacyConfig
    mechanism: Mechanism
    cohort: int
    population: int
    calibrated: bool
    extrapolated: Extrapolation | None = None

    @property
    def accountants(self) -> tuple[str, ...]:
        """The accountants to report, in the scenario's order (the first one calibrates)."""
        return tuple(self.config.accountants)

    @property
    def noise_multiplier(self) -> float:
        return self.mechanism.noise_multiplier


def plan_from_scenario(scenario: Scenario) -> PrivacyPlan:
    """Resolve ``scenario.privacy`` (which must be set) into a :class:`PrivacyPlan`.

    Raises:
        ConfigError: naming the field, for settings that cannot be accounted (e.g. an unreachable target ε,
            ``level: sample`` in this version, a sampling an accountant cannot handle).
    """
    cfg = scenario.privacy
    if cfg is None:
        raise ConfigError("privacy", "set (a mapping with at least `level`) to plan DP", None)
    if cfg.level != "client":
        raise ConfigError(
            "privacy.level",
            "'client' in this version (sample-level DP-SGD is not implemented yet)",
            cfg.level,
        )
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


@dataclass(frozen=True)
class Spend:
    """ε per accountant after all rounds, and after each round of ``rounds_at``."""

    epsilon: dict[str, float]
    rounds_at: list[int]
    curve: dict[str, list[float]]


def spend(
    mechanism: Mechanism, delta: float, accountants: tuple[str, ...], *, max_points: int = 100
) -> Spend:
    """ε of ``mechanism`` by each accountant: the total and a curve over (at most ``max_points``) rounds."""
    at = curve_steps(mechanism.steps, max_points)
    curve = {a: epsilon_curve(a, mechanism, delta, at) for a in accountants}
    total = {
        a: (curve[a][-1] if at and at[-1] == mechanism.steps else epsilon(a, mechanism, delta))
        for a in accountants
    }
    return Spend(epsilon=total, rounds_at=at, curve=curve)


def plan_and_spend(scenario: Scenario) -> tuple[PrivacyPlan, Spend]:
    """The scenario's resolved DP plan and what it spends (the run's curve and totals)."""
    plan = plan_from_scenario(scenario)
    return plan, spend(plan.mechanism, plan.config.delta, plan.accountants)
