"""Laws of privacy accounting (hypothesis): composing n times = n compositions; ε falls in σ, rises in q and T.

Kept fast: fedsim's own ``epsilon`` is exercised for ``rdp`` and ``prv``; the dp_accounting laws run on accountants
with a few RDP orders or a coarse PLD grid (the laws do not depend on either).
"""

from __future__ import annotations

from collections.abc import Callable

import dp_accounting
import hypothesis.strategies as st
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from opacus.accountants import PRVAccountant, RDPAccountant

from fedsim.privacy.accounting import Mechanism, epsilon

# opacus warns at extreme sigma (optimal RDP order at the end of its grid)
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")

DELTA = 1e-5
# a few RDP orders: composition and monotonicity hold order by order
ORDERS = [1.5, 2.0, 4.0, 8.0, 16.0, 32.0]
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE

sigmas = st.floats(0.8, 5.0)
rates = st.floats(0.01, 1.0)


def _poisson(sigma: float, q: float) -> dp_accounting.DpEvent:
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))


def _fixed_size(sigma: float, q: float) -> dp_accounting.DpEvent:
    population = 1_000
    cohort = max(1, round(q * population))
    return dp_accounting.SampledWithoutReplacementDpEvent(
        population, cohort, dp_accounting.GaussianDpEvent(sigma)
    )


def _rdp_poisson() -> RdpAccountant:
    return RdpAccountant(ORDERS)


def _rdp_fixed_size() -> RdpAccountant:
    return RdpAccountant(ORDERS, neighboring_relation=REPLACE_ONE)


def _pld() -> PLDAccountant:
    return PLDAccountant(value_discretization_interval=1e-3)


LEDGERS = [
    pytest.param(_rdp_poisson, _poisson, id="rdp-poisson"),
    pytest.param(_rdp_fixed_size, _fixed_size, id="rdp-fixed-size"),
    pytest.param(_pld, _poisson, id="pld-poisson"),
]


# --------------------------------------------------------------------- composing n times = n compositions


@settings(max_examples=15, deadline=None)
@given(sigmas, rates, st.integers(1, 100))
def test_opacus_steps_n_times_equal_one_n_fold_entry(sigma, q, n):
    for cls in (RDPAccountant, PRVAccountant):
        stepped = cls()
        for _ in range(n):
            stepped.step(noise_multiplier=sigma, sample_rate=q)
        assert stepped.history == [(sigma, q, n)]  # epsilon is a function of the history
    at_once = RDPAccountant()
    at_once.history = [(sigma, q, n)]
    assert stepped.history == at_once.history


@pytest.mark.parametrize("make, event", LEDGERS)
@settings(max_examples=8, deadline=None)
@given(st.floats(1.0, 5.0), st.floats(0.05, 1.0), st.integers(2, 4))
def test_compose_count_equals_repeated_compose(make: Callable, event: Callable, sigma, q, n):
    at_once = make().compose(event(sigma, q), n)
    repeated = make()
    for _ in range(n):
        repeated.compose(event(sigma, q))
    if isinstance(at_once, RdpAccountant):
        np.testing.assert_allclose(at_once.rdp, repeated.rdp, rtol=1e-12)
    assert at_once.get_epsilon(DELTA) == pytest.approx(repeated.get_epsilon(DELTA), rel=1e-6)


# ------------------------------------------------------------------------ monotone in sigma, q and T


def _assert_monotone(eps: Callable[[float, float, int], float], sigma: float, q: float, steps: int) -> None:
    # strict: each perturbation (σ x1.25, q /0.9, T x2) moves ε far more than the accountants' numerical error
    base = eps(sigma, q, steps)
    assert eps(sigma * 1.25, q, steps) < base
    if q <= 0.9:
        assert eps(sigma, q / 0.9, steps) > base
    assert eps(sigma, q, steps * 2) > base


@settings(max_examples=12, deadline=None)
@given(sigmas, st.floats(0.01, 0.2) | st.just(1.0), st.integers(1, 2_000))  # opacus is slowest near q = 0.5
def test_rdp_epsilon_falls_in_sigma_rises_in_q_and_steps(sigma, q, steps):
    def eps(s, r, t):
        return epsilon("rdp", Mechanism(s, r, t), DELTA)

    _assert_monotone(eps, sigma, q, steps)
    # one more step: non-strict (floating point may tie)
    assert eps(sigma, q, steps + 1) >= eps(sigma, q, steps)


@settings(max_examples=3, deadline=None)
@given(st.floats(1.5, 5.0), st.floats(0.05, 0.3), st.integers(1, 20))
def test_prv_epsilon_falls_in_sigma_rises_in_q_and_steps(sigma, q, steps):
    _assert_monotone(lambda s, r, t: epsilon("prv", Mechanism(s, r, t), DELTA), sigma, q, steps)


@pytest.mark.parametrize("make, event", LEDGERS[1:])
@settings(max_examples=5, deadline=None)
@given(st.floats(1.0, 5.0), st.floats(0.05, 1.0), st.integers(1, 20))
def test_ledger_epsilon_falls_in_sigma_rises_in_q_and_steps(make: Callable, event: Callable, sigma, q, steps):
    def eps(s, r, t):
        return make().compose(event(s, r), t).get_epsilon(DELTA)

    _assert_monotone(eps, sigma, q, steps)
