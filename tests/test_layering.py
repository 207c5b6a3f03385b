"""The layering of docs/architecture.md: the import contracts of pyproject.toml (``[tool.importlinter]``: the layer
order, no flwr or ray below the engine, no import cycles) hold, and the core is usable without Flower or Ray
(checked in a fresh process, where a lazy import cannot hide)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORE = [
    "fedsim.gradcore",
    "strategies",
    "strategies.dp",
    "fedsim.scenario",
    "fedsim.scenario.schema",
    "fedsim.scenario.checks",
    "fedsim.scenario.backend",
    "fedsim.scenario.devices",
    "fedsim.protocol",
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


# `lint-imports` itself (import-linter's console script), run from the repository root so that it reads
# pyproject.toml's contracts; without its cache, so a test writes nothing into the checkout.
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def test_import_contracts_hold():
    out = subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    report = out.stdout[out.stdout.find("Contracts") :]
    assert out.returncode == 0, f"lint-imports: a contract is broken (see docs/architecture.md, Layers)\n{report}"
    assert "0 broken" in report, report
