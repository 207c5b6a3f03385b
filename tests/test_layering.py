"""The layering of docs/architecture.md: the gradient core, the strategies, the privacy accounting, the scenario
schema and gossip are usable without Flower or Ray (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = [
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
]

# One process imports the modules in turn and notes, after each, whether flwr or ray is loaded: as nothing else
# loads them, the first module after which they appear is the one that imported them.
PROBE = """
import importlib, json, sys
culprits = {}
for module in sys.argv[1:]:
    importlib.import_module(module)
    bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'ray'))
    if bad:
        culprits[module] = bad[:5]
        break
print(json.dumps(culprits))
"""


def test_core_modules_import_neither_flwr_nor_ray():
    out = subprocess.run([sys.executable, "-c", PROBE, *CORE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {}, f"imports flwr or ray: {out.stdout.strip()}"
