"""``prv`` never builds a domain that would exhaust memory: a direct ε with too small a σ is one ConfigError line
naming ``privacy.noise_multiplier``, and a calibration with ``prv`` first never probes such a σ.

Why: opacus' ``PRVAccountant`` discretises on a domain whose half-width is an RDP ε (unbounded as σ shrinks) and
whose mesh shrinks as 1/√steps; σ 0.1 at q 0.05 over 1000 steps means 4.8e8 points (~80 GB), and the calibration's
first probe was σ 0.1: the process was SIGKILLed. Calibrations run in a child process with an address-space limit,
so a regression fails with MemoryError instead of taking the machine down.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
from opacus.accountants import PRVAccountant

from fedsim.errors import ConfigError
from fedsim.privacy.accounting import PRV_MAX_GRID_POINTS, Mechanism, epsilon, prv_grid_points

LIMIT = 3 * 2**30  # bytes of address space for the child (the guard's cap is ~1.7 GB)


def prv(sigma, q, steps, delta=1e-5):
    acc = PRVAccountant()
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(delta)


def calibrate_in_child(**kwargs):
    code = (
        "import json, sys; from fedsim.privacy.accounting import calibrate_noise; "
        "print(json.dumps(calibrate_noise('prv', **json.loads(sys.argv[1]))))"
    )

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_sigma_whose_prv_domain_would_exhaust_memory_is_refused_in_one_line():
    mech = Mechanism(0.1, 0.05, 1000)
    assert prv_grid_points(((0.1, 0.05, 1000),), 1e-5) > 40 * PRV_MAX_GRID_POINTS
    with pytest.raises(
        ConfigError, match=r"^privacy\.noise_multiplier must be >= 0\.2\d* for the prv"
    ) as err:
        epsilon("prv", mech, 1e-5)
    assert "\n" not in str(err.value)


def test_calibrating_with_prv_first_meets_the_target_without_exhausting_memory():
    # client level: 1000 clients, cohort 50, 1000 rounds, target ε 4 (SIGKILLed before the guard)
    sigma = calibrate_in_child(target_epsilon=4.0, delta=1e-5, sample_rate=0.05, steps=1000)
    assert prv(sigma, 0.05, 1000) <= 4.0 < prv(sigma / 1.001, 0.05, 1000)
