"""Privacy accounting of a repeated subsampled Gaussian mechanism: ε(δ), ε per step, σ calibration, extrapolation.

Why this module exists: every DP run and ``fedsim privacy`` must say what a scenario spends, by three accountants
(``rdp``, ``prv``, ``pld``), without training. The math is delegated to ``opacus.accountants`` and
``dp_accounting``; this module only validates the inputs (all of them, before any accountant is built), maps one
``Mechanism`` onto each library's events, and makes the per-step curve fast enough for a report.

Sampling: ``poisson`` (each client/example joins a step independently with rate q, add/remove-one adjacency) is
what every accountant handles. ``fixed_size`` (a cohort of round(q·N) drawn without replacement, replace-one
adjacency) is accounted only by ``rdp``, through dp_accounting's ``SampledWithoutReplacementDpEvent``; asking another
accountant for it is an error, never a silent Poisson assumption. Replacing one client moves a clipped sum by up to
2C, so that accountant is given σ/2 (dp_accounting 0.6 does not halve it itself: google/differential-privacy #378).

Imports: dp_accounting (which imports scipy.signal, scipy.optimize and scipy.stats) and scipy are imported by the
functions that use them, so a report asks only for what its accountants need (an ``rdp``-only client-level report
loads neither dp_accounting nor scipy.signal).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.errors import ConfigError, UnknownNameError
from fedsim.privacy import opacus_accountants

if TYPE_CHECKING:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "pld")
# fixed_size = a fixed-size cohort drawn without replacement
SAMPLINGS: tuple[str, ...] = ("poisson", "fixed_size")
FIXED_SIZE_ACCOUNTANTS: tuple[str, ...] = ("rdp",)
_POISSON_ONLY_WHY = {
    "prv": "opacus' PRVAccountant models Poisson sampling only",
    "pld": "dp_accounting 0.6's PLDAccountant has no sampling-without-replacement event",
}
# PRVAccountant.get_epsilon's own error budget (eps_error=0.01, delta_error=delta/1000), reused by its curve.
_PRV_EPS_ERROR = 0.01
_PRV_DELTA_ERROR_FRACTION = 1e-3
# The pld curve's points before the last use a 10x coarser grid than PLDAccountant's default 1e-4: still pessimistic
# upper bounds (within ~0.1 % of the fine grid at T = 10 000), 8x faster.
_PLD_CURVE_DISCRETIZATION = 1e-3


def _real(field: str, value: Any, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(field, expected, value)
    return float(value)


def _integer(field: str, value: Any, minimum: int, expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(field, expected, value)
    return int(value)


def _positive(field: str, value: Any) -> float:
    if _real(field, value, "a finite number > 0") <= 0:
        raise ConfigError(field, "a finite number > 0", value)
    return float(value)


@dataclass(frozen=True)
class Mechanism:
    """One DP mechanism invocation repeated ``steps`` times: subsampled Gaussian.

    ``noise_multiplier`` σ is the noise std over the clip norm C (noise N(0, σ²C²) on the sum of clipped updates);
    ``sample_rate`` q is the chance a client (or example) takes part in one invocation; ``population`` N is needed
    for ``fixed_size`` sampling, whose cohort is ``round(q * N)``. Validated on construction.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    sampling: str = "poisson"
    population: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field that is wrong (``privacy.<field>``)."""
        _positive("privacy.noise_multiplier", self.noise_multiplier)
        q = _real("privacy.sample_rate", self.sample_rate, "a number in (0, 1]")
        if not 0 < q <= 1:
            raise ConfigError("privacy.sample_rate", "a number in (0, 1]", self.sample_rate)
        _integer("privacy.steps", self.steps, 1, "an integer >= 1")
        if self.sampling not in SAMPLINGS:
            raise UnknownNameError("privacy.sampling", self.sampling, list(SAMPLINGS))
        if self.sampling == "fixed_size":
            _integer("privacy.population", self.population, 1, "an integer >= 1 for fixed_size sampling")
            if self.cohort < 1:
                raise ConfigError(
                    "privacy.population",
                    "large enough for a cohort round(sample_rate * population) >= 1",
                    self.population,
                )

    @property
    def cohort(self) -> int | None:
        """The fixed cohort size ``round(q * N)`` for ``fixed_size`` sampling, else ``None``."""
        return round(self.sample_rate * self.population) if self.sampling == "fixed_size" else None


def validate_delta(delta: float) -> None:
    """Raise ``ConfigError`` on ``privacy.delta`` unless 0 < δ < 1."""
    if not 0 < _real("privacy.delta", delta, "a number in (0, 1)") < 1:
        raise ConfigError("privacy.delta", "a number in (0, 1)", delta)


def validate_accountant(name: str) -> None:
    """Raise ``UnknownNameError`` on ``privacy.accountants`` unless ``name`` is one of ``ACCOUNTANTS``."""
    if name not in ACCOUNTANTS:
        raise UnknownNameError("privacy.accountants", name, list(ACCOUNTANTS))


def _validate(accountant: str, mech: Mechanism, delta: float) -> None:
    validate_accountant(accountant)
    mech.validate()
    validate_delta(delta)
    if accountant == "pld":
        _check_pld_size(mech)
    if mech.sampling == "fixed_size" and accountant not in FIXED_SIZE_ACCOUNTANTS:
        raise ConfigError(
            "privacy.accountants",
            f"{' or '.join(FIXED_SIZE_ACCOUNTANTS)} for fixed_size sampling ({_POISSON_ONLY_WHY[accountant]})",
            accountant,
        )
    if accountant == "prv":
        _check_prv_size([mech], delta)


def describe_sampling(mech: Mechanism) -> str:
    """One plain-words sentence on how participants are sampled and which adjacency the guarantee uses."""
    mech.validate()
    if mech.sampling == "fixed_size":
        return (
            f"a fixed-size cohort of {mech.cohort} of {mech.population} drawn without replacement "
            "(replace-one adjacency)"
        )
    return f"Poisson sampling with rate q={mech.sample_rate:g} per round (add/remove-one adjacency)"


# ------------------------------------------------------------------------------------------ noise truncation

FLOAT64_NOISE_BOUND = math.sqrt(106 * math.log(2))
"""|z| bound of torch's float64 CPU Gaussian (Box–Muller on 53-bit uniforms): √(−2 ln 2⁻⁵³) ≈ 8.57."""
FLOAT32_NOISE_BOUND = math.sqrt(48 * math.log(2))
"""|z| bound of torch's float32 CPU Gaussian for tensors of >= 16 elements (24-bit uniforms): ≈ 5.77."""


def truncation_delta(mech: Mechanism, bound: float = FLOAT64_NOISE_BOUND) -> float:
    """The δ a Gaussian sampler cut at ``bound`` standard deviations adds: T·q·[Φ̄(τ − Δ/σ) − Φ̄(τ)].

    Δ/σ is the shift of one invocation in noise units: 1/σ (add/remove), 2/σ for ``fixed_size`` (replace-one).
    This is the one-coordinate form of the privacy spec (the shift along one axis of the noise); fedsim draws in
    float64, where it is ~1e-12 or less for the shipped scenarios.
    """
    from scipy.stats import norm

    mech.validate()
    shift = (2.0 if mech.sampling == "fixed_size" else 1.0) / mech.noise_multiplier
    per_step = float(norm.sf(bound - shift) - norm.sf(bound))
    return min(1.0, mech.steps * mech.sample_rate * per_step)


# ---------------------------------------------------------------------------------------------- library events


def _poisson_event(mech: Mechanism) -> dp_accounting.DpEvent:
    import dp_accounting

    return dp_accounting.PoissonSampledDpEvent(
        mech.sample_rate, dp_accounting.GaussianDpEvent(mech.noise_multiplier)
    )


def _fixed_size_event(mech: Mechanism) -> dp_accounting.DpEvent:
    # Under replace-one adjacency a clipped sum moves by up to 2C, while dp_accounting 0.6 feeds
    # GaussianDpEvent.noise_multiplier (= noise std / C) into formulas normalised by the L2 sensitivity;
    # hence σ/2 (google/differential-privacy issue #378, open at 0.6).
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(mech.noise_multiplier / 2)
    return dp_accounting.SampledWithoutReplacementDpEvent(mech.population, mech.cohort, gaussian)


def _replace_one_rdp() -> rdp_privacy_accountant.RdpAccountant:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    return rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )


# ------------------------------------------------------------------------------------------------------ epsilon


def _rdp_epsilon(mech: Mechanism, delta: float) -> float:
    if mech.sampling == "fixed_size":
        return float(_replace_one_rdp().compose(_fixed_size_event(mech), mech.steps).get_epsilon(delta))
    accountant = opacus_accountants.load().accountants.RDPAccountant()
    accountant.history = [(mech.noise_multiplier, mech.sample_rate, mech.steps)]
    return float(accountant.get_epsilon(delta))


def _prv_epsilon(mech: Mechanism, delta: float) -> float:
    accountant = opacus_accountants.load().accountants.PRVAccountant()
    accountant.history = [(mech.noise_multiplier, mech.sample_rate, mech.steps)]
    with np.errstate(divide="ignore"):  # log(0) at q = 1 inside opacus, masked out by its np.where
        return float(accountant.get_epsilon(delta))


PLD_MAX_GRID_POINTS = 2_000_000
"""The largest one-step PLD grid ``pld`` builds (about 16 MB); a smaller σ is refused, not left to die in
dp_accounting's C++ with ``std::bad_alloc`` (its privacy-loss range grows as 1/σ², its grid step is 1e-4)."""
_PLD_TAIL_SIGMAS = 10.0  # the loss range of a Gaussian PLD: ±(1/(2σ²) + z/σ) with z ≈ 10 tail std


def pld_grid_points(noise_multiplier: float, discretization: float = 1e-4) -> float:
    """Rough size of the one-step PLD grid of a Gaussian with noise multiplier σ: (1/σ² + 2z/σ)/step."""
    sigma = noise_multiplier
    return (1.0 / sigma**2 + 2 * _PLD_TAIL_SIGMAS / sigma) / discretization


def pld_min_noise() -> float:
    """The smallest σ (to 0.01) whose one-step PLD grid fits ``PLD_MAX_GRID_POINTS``."""
    return next(s / 100 for s in range(1, 10_000) if pld_grid_points(s / 100) <= PLD_MAX_GRID_POINTS)


class GridTooLargeError(ConfigError):
    """σ is too small for a numerical accountant (``pld``, ``prv``): its grid would exhaust memory. A σ search
    treats such a σ as spending more than any target (:func:`probe_epsilon`)."""


def _check_pld_size(mech: Mechanism) -> None:
    if pld_grid_points(mech.noise_multiplier) > PLD_MAX_GRID_POINTS:
        smallest = pld_min_noise()
        raise GridTooLargeError(
            "privacy.noise_multiplier",
            f">= {smallest:g} for the pld accountant (its grid grows as 1/σ² and would exhaust memory; "
            "use rdp or prv for this σ)",
            mech.noise_multiplier,
        )


PRV_MAX_GRID_POINTS = 10_000_000
"""The largest domain ``prv`` discretises (opacus' ``PRVAccountant`` holds ~170 bytes a point at its peak: ~1.7 GB).
Its half-width is an RDP ε (``compute_safe_domain_size``), which grows without bound as σ shrinks, and its mesh
shrinks as 1/√steps: a small σ is refused, not left to be SIGKILLed (σ 0.1, q 0.05, 1000 steps: 4.8e8 points)."""


@functools.lru_cache(maxsize=4096)
def prv_grid_points(mechanisms: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """The number of points of the domain opacus' ``PRVAccountant`` builds for ``(σ, q, steps)`` mechanisms at
    ``delta`` (its ``_get_domain``: half-width ``compute_safe_domain_size``, mesh eps_error/√(T·ln(12/δ_err)/2)).
    Decreasing in every σ, increasing in steps; costs two RDP evaluations (cached)."""
    analysis = opacus_accountants.load().prv
    delta_error = delta * _PRV_DELTA_ERROR_FRACTION
    prvs = [analysis.PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in mechanisms]
    with warnings.catch_warnings():  # the RDP conversion warns when the best order is at the grid's end
        warnings.filterwarnings("ignore", "Optimal order is the", UserWarning)
        half_width = analysis.compute_safe_domain_size(
            prvs, [k for _, _, k in mechanisms], eps_error=_PRV_EPS_ERROR, delta_error=delta_error
        )
    total = sum(k for _, _, k in mechanisms)
    mesh = _PRV_EPS_ERROR / math.sqrt(total * math.log(12 / delta_error) / 2)
    return 2 * half_width / mesh


def prv_min_noise(mechanisms: Sequence[Mechanism], delta: float) -> float:
    """The smallest σ (to 1 %) such that ``mechanisms`` with every σ scaled to keep their ratios fit
    ``PRV_MAX_GRID_POINTS`` (bisection on the size estimate; for the error message)."""

    def points(scale: float) -> float:
        return prv_grid_points(_prv_key(mechanisms, scale), delta)

    low, high = 1.0, 2.0
    while points(high) > PRV_MAX_GRID_POINTS:
        low, high = high, 2 * high
    while high > low * 1.01:
        mid = math.sqrt(low * high)
        low, high = (mid, high) if points(mid) > PRV_MAX_GRID_POINTS else (low, mid)
    return high * mechanisms[0].noise_multiplier


def _prv_key(mechanisms: Sequence[Mechanism], scale: float = 1.0) -> tuple[tuple[float, float, int], ...]:
    return tuple((m.noise_multiplier * scale, m.sample_rate, m.steps) for m in mechanisms)


def _check_prv_size(mechanisms: Sequence[Mechanism], delta: float) -> None:
    points = prv_grid_points(_prv_key(mechanisms), delta)
    if points > PRV_MAX_GRID_POINTS:
        smallest = prv_min_noise(mechanisms, delta)
        raise GridTooLargeError(
            "privacy.noise_multiplier",
            f">= {smallest:.3g} for the prv accountant with this sample rate, number of steps and delta (its "
            f"domain would have {points:.2g} points, over {PRV_MAX_GRID_POINTS:.0e}, and exhaust memory; use rdp "
            "for this σ)",
            mechanisms[0].noise_multiplier,
        )


def _pld_epsilon(mech: Mechanism, delta: float) -> float:
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant()
    return float(accountant.compose(_poisson_event(mech), mech.steps).get_epsilon(delta))


_EPSILON: dict[str, Callable[[Mechanism, float], float]] = {
    "rdp": _rdp_epsilon,
    "prv": _prv_epsilon,
    "pld": _pld_epsilon,
}


def epsilon(accountant: str, mech: Mechanism, delta: float) -> float:
    """ε spent after ``mech.steps`` invocations at ``delta``, by the named accountant (an upper bound).

    Raises:
        ConfigError: on any invalid input, or an accountant that cannot account for ``mech.sampling``.

    References:
        Mironov, Talwar, Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism", arXiv 1908.10530,
        2019 (``rdp``, opacus ``RDPAccountant``); Wang, Balle, Kasiviswanathan, "Subsampled Rényi Differential
        Privacy and Analytical Moments Accountant", AISTATS 2019, arXiv 1808.00087 (``rdp`` + ``fixed_size``,
        dp_accounting ``RdpAccountant``); Gopi, Lee, Wutschitz, "Numerical Composition of Differential Privacy",
        NeurIPS 2021, arXiv 2106.02848 (``prv``, opacus ``PRVAccountant``, its upper bound); Doroshenko et al.,
        "Connect the Dots: Tighter Discrete Approximations of Privacy Loss Distributions", PETS 2022,
        arXiv 2207.04380 (``pld``, dp_accounting ``PLDAccountant``).
    """
    _validate(accountant, mech, delta)
    return _epsilon_of(accountant, mech, delta)


@functools.lru_cache(maxsize=4096)
def _epsilon_of(accountant: str, mech: Mechanism, delta: float) -> float:
    """The accountants are pure functions of (mechanism, δ) and take up to seconds: a run's plan, its report and
    a sample-level worst-group search ask for the same values, which are computed once per process."""
    return _EPSILON[accountant](mech, delta)


# ------------------------------------------------------------------------------------- heterogeneous sequences


def _validate_sequence(accountant: str, mechanisms: Sequence[Mechanism], delta: float) -> list[Mechanism]:
    mechs = list(mechanisms)
    if not mechs or not all(isinstance(m, Mechanism) for m in mechs):
        raise ConfigError("mechanisms", "a non-empty sequence of Mechanism", mechanisms)
    for m in mechs:
        _validate(accountant, m, delta)
    if accountant == "prv" and len(mechs) > 1:  # one domain for the whole sequence: finer, wider than each's
        _check_prv_size(mechs, delta)
    return mechs


def _rdp_sequence(mechs: Sequence[Mechanism], delta: float) -> float:
    if any(m.sampling == "fixed_size" for m in mechs):
        acc = _replace_one_rdp()
        for m in mechs:
            event = _fixed_size_event(m) if m.sampling == "fixed_size" else _poisson_event(m)
            acc.compose(event, m.steps)
        return float(acc.get_epsilon(delta))
    accountant = opacus_accountants.load().accountants.RDPAccountant()
    accountant.history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechs]
    return float(accountant.get_epsilon(delta))


def _prv_sequence(mechs: Sequence[Mechanism], delta: float) -> float:
    accountant = opacus_accountants.load().accountants.PRVAccountant()
    accountant.history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechs]
    with np.errstate(divide="ignore"):  # log(0) at q = 1 inside opacus, masked out by its np.where
        return float(accountant.get_epsilon(delta))


def _pld_sequence(mechs: Sequence[Mechanism], delta: float) -> float:
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    event = dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(_poisson_event(m), m.steps) for m in mechs]
    )
    return float(PLDAccountant().compose(event).get_epsilon(delta))


_SEQUENCE: dict[str, Callable[[Sequence[Mechanism], float], float]] = {
    "rdp": _rdp_sequence,
    "prv": _prv_sequence,
    "pld": _pld_sequence,
}


def epsilon_of_sequence(accountant: str, mechanisms: Sequence[Mechanism], delta: float) -> float:
    """ε at ``delta`` of the adaptive composition of different mechanisms, each repeated its ``steps`` times
    (e.g. DIFF2's restart rounds with σ1 and difference rounds with σ2), by the named accountant.

    ``rdp`` adds the mechanisms' RDP curves (opacus ``RDPAccountant`` with one history entry each; with a
    ``fixed_size`` mechanism, dp_accounting's replace-one ``RdpAccountant``); ``prv`` composes their PRVs (opacus
    ``PRVAccountant`` with several history entries, its upper bound); ``pld`` composes their PLDs (dp_accounting
    ``PLDAccountant`` on a ``ComposedDpEvent`` of ``SelfComposedDpEvent``s). One mechanism gives ``epsilon()``.

    Raises:
        ConfigError: as ``epsilon()`` for any mechanism, or an empty sequence.
    """
    mechs = _validate_sequence(accountant, mechanisms, delta)
    return _SEQUENCE[accountant](mechs, delta)


def _pld_sequence_curve(prefixes: Sequence[Sequence[Mechanism]], delta: float) -> list[float]:
    # Each distinct one-step PLD built once (10x coarser grid, as _pld_curve), then self-composed per count.
    from dp_accounting.pld import privacy_loss_distribution

    ones: dict[tuple[float, float], Any] = {}
    out = []
    for mechs in prefixes:
        total = None
        for m in mechs:
            key = (m.noise_multiplier, m.sample_rate)
            if key not in ones:
                ones[key] = privacy_loss_distribution.from_gaussian_mechanism(
                    standard_deviation=m.noise_multiplier,
                    sampling_prob=m.sample_rate,
                    value_discretization_interval=_PLD_CURVE_DISCRETIZATION,
                )
            part = ones[key].self_compose(m.steps)
            total = part if total is None else total.compose(part)
        out.append(float(total.get_epsilon_for_delta(delta)))
    return out


def sequence_curve(accountant: str, prefixes: Sequence[Sequence[Mechanism]], delta: float) -> list[float]:
    """ε after each of several growing prefixes of a run (each prefix: the mechanisms composed so far).

    The last point is ``epsilon_of_sequence`` of the last prefix. Earlier points: exact for ``rdp`` and ``prv``;
    ``pld`` uses the 10x coarser pessimistic grid of ``epsilon_curve``. A running minimum from the right keeps the
    curve non-decreasing (every point stays an upper bound, as in ``epsilon_curve``).

    Raises:
        ConfigError: as ``epsilon_of_sequence`` for any prefix, or no prefixes.
    """
    if not prefixes:
        raise ConfigError("prefixes", "a non-empty sequence of mechanism sequences", prefixes)
    checked = [_validate_sequence(accountant, p, delta) for p in prefixes]
    *head, last = checked
    with np.errstate(divide="ignore"):
        if accountant == "pld" and all(m.sampling == "poisson" for p in head for m in p):
            points = _pld_sequence_curve(head, delta) if head else []
        else:
            points = [_SEQUENCE[accountant](p, delta) for p in head]
    points.append(_SEQUENCE[accountant](last, delta))
    for i in range(len(points) - 2, -1, -1):
        points[i] = min(points[i], points[i + 1])
    return points


# -------------------------------------------------------------------------------------------------------- curve


def _rdp_curve(mech: Mechanism, delta: float, steps: Sequence[int]) -> list[float]:
    # RDP composes additively: one step's RDP at every order, scaled by k (bit-identical to the accountants).
    if mech.sampling == "fixed_size":
        from dp_accounting.rdp import rdp_privacy_accountant

        one = _replace_one_rdp().compose(_fixed_size_event(mech))
        return [
            float(rdp_privacy_accountant.compute_epsilon(one.orders, one.rdp * k, delta)[0]) for k in steps
        ]
    opacus = opacus_accountants.load()
    orders = opacus.accountants.RDPAccountant.DEFAULT_ALPHAS
    rdp = opacus.rdp.compute_rdp(
        q=mech.sample_rate, noise_multiplier=mech.noise_multiplier, steps=1, orders=orders
    )
    return [float(opacus.rdp.get_privacy_spent(orders=orders, rdp=rdp * k, delta=delta)[0]) for k in steps]


def _prv_curve(mech: Mechanism, delta: float, steps: Sequence[int]) -> list[float]:
    # PRVAccountant's own pipeline, but with one discretisation shared by every k: the domain and mesh it would
    # build for max(steps) are safe (tails) and fine enough (mesh) for every smaller k, so each point keeps the
    # same eps_error/delta_error guarantee. The grid is widened to an FFT-friendly size, with create_aligned's layout.
    from scipy import fft

    analysis = opacus_accountants.load().prv
    delta_error = delta * _PRV_DELTA_ERROR_FRACTION
    prv = analysis.PoissonSubsampledGaussianPRV(mech.sample_rate, mech.noise_multiplier)
    n = max(steps)
    half_width = analysis.compute_safe_domain_size(
        [prv], [n], eps_error=_PRV_EPS_ERROR, delta_error=delta_error
    )
    mesh = _PRV_EPS_ERROR / np.sqrt(n * np.log(12 / delta_error) / 2)  # as PRVAccountant._get_domain
    size = analysis.Domain.create_aligned(-half_width, half_width, mesh).size
    while (size := fft.next_fast_len(size, real=True)) % 2:
        size += 1
    domain = analysis.Domain(-(size // 2 - 1) * mesh, (size // 2) * mesh, size)
    dprv = analysis.discretize(
        analysis.TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max), domain
    )
    spectrum = fft.rfft(dprv.pmf)  # one transform for every k (compose_heterogeneous would redo it per k)
    eps_error = _PRV_EPS_ERROR
    return [
        float(_self_composed(analysis, dprv, spectrum, k).compute_epsilon(delta, delta_error, eps_error)[2])
        for k in steps
    ]


def _self_composed(analysis: Any, dprv: Any, spectrum: np.ndarray, k: int) -> Any:
    """``compose_heterogeneous([dprv], [k])`` of opacus (its ``_compose_fourier``, step for step, so bit-identical)
    given ``spectrum = rfft(dprv.pmf)``."""
    from scipy import fft

    pmf = fft.irfft(spectrum**k)
    m = k - 1
    if k % 2 == 0:
        m += len(pmf) // 2
    domain = dprv.domain.shift_right(dprv.domain.shifts * (k - 1))
    return analysis.DiscretePRV(pmf=np.roll(pmf, m), domain=domain)


def _pld_curve(mech: Mechanism, delta: float, steps: Sequence[int]) -> list[float]:
    # What PLDAccountant does for a Poisson-sampled Gaussian, with the one-step PLD built once.
    from dp_accounting.pld import privacy_loss_distribution

    one = privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=mech.noise_multiplier,
        sampling_prob=mech.sample_rate,
        value_discretization_interval=_PLD_CURVE_DISCRETIZATION,
    )
    return [float(one.self_compose(k).get_epsilon_for_delta(delta)) for k in steps]


_CURVES: dict[str, Callable[[Mechanism, float, Sequence[int]], list[float]]] = {
    "rdp": _rdp_curve,
    "prv": _prv_curve,
    "pld": _pld_curve,
}


def _validate_at_steps(at_steps: Sequence[int], steps: int) -> list[int]:
    expected = f"a non-empty, strictly increasing sequence of integers in 1..{steps}"
    try:
        out = [_integer("at_steps", k, 1, expected) for k in at_steps]
    except TypeError:
        raise ConfigError("at_steps", expected, at_steps) from None
    if not out or out[-1] > steps or any(a >= b for a, b in itertools.pairwise(out)):
        raise ConfigError("at_steps", expected, at_steps)
    return out


def epsilon_curve(accountant: str, mech: Mechanism, delta: float, at_steps: Sequence[int]) -> list[float]:
    """ε after each step count in ``at_steps`` (strictly increasing, each in 1..``mech.steps``).

    The last point is ``epsilon()`` at that step count. Earlier points are upper bounds from the same accountant,
    computed faster: ``rdp`` scales one step's RDP (exact); ``prv`` shares one discretisation (same error budget);
    ``pld`` uses a 10x coarser pessimistic grid. A running minimum from the right then makes the curve
    non-decreasing; it keeps every point an upper bound, since the true ε can only grow with the step count.

    Raises:
        ConfigError: as ``epsilon()``, or on ``at_steps`` outside 1..``mech.steps`` or not increasing.
    """
    _validate(accountant, mech, delta)
    *head, last = _validate_at_steps(at_steps, mech.steps)
    with np.errstate(divide="ignore"):
        points = _CURVES[accountant](mech, delta, head) if head else []
    points.append(_epsilon_of(accountant, replace(mech, steps=last), delta))
    for i in range(len(points) - 2, -1, -1):
        points[i] = min(points[i], points[i + 1])
    return points


def curve_steps(steps: int, max_points: int = 100) -> list[int]:
    """All of 1..``steps`` if ``steps <= max_points``, else ``max_points`` evenly spaced counts ending at ``steps``."""
    steps = _integer("privacy.steps", steps, 1, "an integer >= 1")
    max_points = _integer("max_points", max_points, 1, "an integer >= 1")
    if steps <= max_points:
        return list(range(1, steps + 1))
    return [-(-i * steps // max_points) for i in range(1, max_points + 1)]  # ceil(i·T/P), gaps >= 1


# -------------------------------------------------------------------------------------------------- calibration


def calibrate_noise(
    accountant: str,
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    sampling: str = "poisson",
    population: int | None = None,
    sigma_min: float = 0.1,
    sigma_max: float = 100.0,
    tol: float = 1e-3,
) -> float:
    """The smallest σ in [``sigma_min``, ``sigma_max``] (to relative tolerance ``tol``) whose ε is <= the target.

    Bisection on a log scale over the named accountant, as opacus ``get_noise_multiplier`` does. The result σ has
    ε(σ) <= ``target_epsilon`` and ε(σ / (1 + tol)) > ``target_epsilon`` (or σ = ``sigma_min``, if that suffices).

    Raises:
        ConfigError: on invalid inputs; on ``privacy.target_epsilon`` when even ``sigma_max`` spends more.

    References:
        opacus ``opacus.accountants.utils.get_noise_multiplier``.
    """
    target = _positive("privacy.target_epsilon", target_epsilon)
    sigma_min = _positive("sigma_min", sigma_min)
    sigma_max = _positive("sigma_max", sigma_max)
    if sigma_max <= sigma_min:
        raise ConfigError("sigma_max", f"greater than sigma_min = {sigma_min:g}", sigma_max)
    if not 0 < _real("tol", tol, "a number in (0, 1)") < 1:
        raise ConfigError("tol", "a number in (0, 1)", tol)
    mech = Mechanism(sigma_max, sample_rate, steps, sampling, population)
    _validate(accountant, mech, delta)
    if accountant == "pld":  # probes below this σ would exhaust memory (see PLD_MAX_GRID_POINTS)
        sigma_min = min(max(sigma_min, pld_min_noise()), sigma_max / (1 + tol))
    return bisect_noise(
        lambda sigma: epsilon(accountant, replace(mech, noise_multiplier=sigma), delta),
        target_epsilon=target,
        accountant=accountant,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        tol=tol,
    )


def bisect_noise(
    epsilon_of: Callable[[float], float],
    *,
    target_epsilon: float,
    accountant: str,
    sigma_min: float = 0.1,
    sigma_max: float = 100.0,
    tol: float = 1e-3,
) -> float:
    """The smallest σ in [``sigma_min``, ``sigma_max``] (to relative tolerance ``tol``) with ``epsilon_of(σ)`` <=
    the target, for any ε(σ) that decreases in σ (one mechanism, or the worst of several: sample-level DP).

    A σ the accountant refuses for memory (:class:`GridTooLargeError`, refused σ are all below the accepted ones)
    counts as spending more than the target (:func:`probe_epsilon`): the result is then the smallest σ it evaluates.

    Raises:
        ConfigError: on ``privacy.target_epsilon`` when even ``sigma_max`` spends more (``accountant`` names the
            accountant in the message).
    """
    target = _positive("privacy.target_epsilon", target_epsilon)

    def eps(sigma: float) -> float:
        return probe_epsilon(epsilon_of, sigma)

    at_max = eps(sigma_max)
    if at_max > target:
        raise ConfigError(
            "privacy.target_epsilon",
            f"reachable with noise_multiplier <= {sigma_max:g} (the {accountant} accountant gives "
            f"epsilon = {at_max:.4g} there)",
            target_epsilon,
        )
    low, high = sigma_min, sigma_max
    if eps(low) <= target:
        return low
    while high > low * (1 + tol):  # invariant: eps(low) > target >= eps(high)
        mid = math.sqrt(low * high)
        if eps(mid) <= target:
            high = mid
        else:
            low = mid
    return high


def probe_epsilon(epsilon_of: Callable[[float], float], sigma: float) -> float:
    """``epsilon_of(σ)`` for a σ search: ∞ where the accountant refuses σ as too small for its grid (a smaller σ
    only spends more), and opacus' "optimal order at the end of the grid" warnings silenced (probes are not
    reported numbers)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Optimal order is the", UserWarning)
        try:
            return epsilon_of(sigma)
        except GridTooLargeError:
            return math.inf


# ------------------------------------------------------------------------------------------------ extrapolation


def extrapolate(
    noise_multiplier: float, *, simulated_cohort: int, deployed_cohort: int, deployed_population: int
) -> tuple[float, float]:
    """(σ', q') for a deployment: σ' = σ·s'/s keeps the noise on the mean update fixed, q' = s'/N'.

    A simulation trains with cohort s and σ; the deployed system has cohort s' from population N'. Adding σ'C noise
    to a sum over s' clients gives the mean the same noise std σC/s as the simulation, so the simulated model
    quality carries over, and the guarantee to report is that of (σ', q') over the same number of rounds.

    Raises:
        ConfigError: naming ``privacy.noise_multiplier``, ``privacy.simulated_cohort``,
            ``privacy.deployed_cohort`` or ``privacy.deployed_population``.

    References:
        Pelikan et al., "Federated Learning with Differential Privacy for End-to-End Speech Recognition",
        arXiv 2310.00098, 2023; pfl-research ``noise_cohort_size`` (Granqvist et al., arXiv 2404.06430, 2024).
    """
    sigma = _positive("privacy.noise_multiplier", noise_multiplier)
    s = _integer("privacy.simulated_cohort", simulated_cohort, 1, "an integer >= 1")
    s_prime = _integer("privacy.deployed_cohort", deployed_cohort, 1, "an integer >= 1")
    n_prime = _integer(
        "privacy.deployed_population",
        deployed_population,
        s_prime,
        f"an integer >= privacy.deployed_cohort ({s_prime})",
    )
    return sigma * s_prime / s, s_prime / n_prime
