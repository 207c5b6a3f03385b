"""Opacus' accountants (``opacus.accountants``) without opacus' training stack.

Why this module exists: the ``rdp`` and ``prv`` accountants are opacus' ``RDPAccountant`` and ``PRVAccountant``,
whose math (``opacus.accountants.analysis``) is plain numpy and scipy. Importing them the ordinary way runs
``opacus/__init__.py`` first, which imports torch, the per-sample gradient samplers and the ``PrivacyEngine`` (with
``torch.distributed.tensor`` and sympy): about 3.5 s of CPU, most of what ``fedsim privacy`` used to take, for
nothing it uses. Only ``opacus.accountants.accountant`` names ``opacus.optimizers.DPOptimizer``, in a type
annotation.

:func:`load` therefore returns opacus' own modules, unchanged, loaded from the installed package while two
placeholders stand in for the package ``opacus`` (no ``__init__`` run) and ``opacus.optimizers`` (an annotation
class); afterwards every module name the load added is taken out of ``sys.modules`` again. The modules this one
holds are private copies: a later ``import opacus`` (training with ``PrivacyEngine``) loads the real package
and its own accountants as if nothing had happened. When opacus is already imported, its modules are used as they
are. The numbers are opacus' own either way (``tests/privacy/test_opacus_accountants.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from dataclasses import dataclass

_LOCK = threading.Lock()


@dataclass(frozen=True)
class OpacusAccountants:
    """The opacus modules the accountants use: ``opacus.accountants``, its ``analysis.rdp`` and ``analysis.prv``."""

    accountants: types.ModuleType
    rdp: types.ModuleType
    prv: types.ModuleType


_LOADED: OpacusAccountants | None = None


def _import_all() -> OpacusAccountants:
    return OpacusAccountants(
        accountants=importlib.import_module("opacus.accountants"),
        rdp=importlib.import_module("opacus.accountants.analysis.rdp"),
        prv=importlib.import_module("opacus.accountants.analysis.prv"),
    )


def _is_opacus(name: str) -> bool:
    return name == "opacus" or name.startswith("opacus.")


def load() -> OpacusAccountants:
    """Opacus' accountant modules, loaded once per process (see the module docstring)."""
    global _LOADED
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        if "opacus" in sys.modules:  # the real package is there already: nothing to save
            _LOADED = _import_all()
            return _LOADED
        spec = importlib.util.find_spec("opacus")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("opacus is not installed (it provides the rdp and prv accountants)")
        package = types.ModuleType("opacus")
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = "opacus"
        optimizers = types.ModuleType("opacus.optimizers")

        class DPOptimizer:  # opacus.accountants.accountant's only use of opacus.optimizers: an annotation
            """Stands in for ``opacus.optimizers.DPOptimizer`` in type annotations while the accountants load."""

        optimizers.DPOptimizer = DPOptimizer  # type: ignore[attr-defined]
        before = set(sys.modules)
        sys.modules["opacus"], sys.modules["opacus.optimizers"] = package, optimizers
        try:
            _LOADED = _import_all()
        finally:
            for name in [n for n in sys.modules if _is_opacus(n) and n not in before]:
                del sys.modules[name]
        return _LOADED
