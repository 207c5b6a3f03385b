"""DESIGN.md's layering: gradcore and strategies are usable without Flower or Ray (checked in a fresh process)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "fedsim.gradcore",
        "strategies",
        "strategies.dp",
        "fedsim.scenario.schema",
        "fedsim.engine.protocol",
        "fedsim.privacy.plan",
        "fedsim.privacy.report",
        "fedsim.privacy.client_level",
        "fedsim.privacy.sample_level",
        "fedsim.gossip",
    ],
)
def test_core_modules_import_neither_flwr_nor_ray(module):
    code = (
        f"import sys, {module}; bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'ray'));"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{module} imports {out.stdout.strip()} {out.stderr[-500:]}"
