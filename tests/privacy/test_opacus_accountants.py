"""Opacus' accountants loaded without opacus' training stack (``fedsim.privacy.opacus_accountants``): the same
numbers as the ordinary import, nothing left behind in ``sys.modules``, and the real package still importable.

Each check runs in a fresh interpreter: the test process has usually imported opacus already, and then the loader
(rightly) just uses it.
"""

from __future__ import annotations

from tests.fresh_python import python


def test_light_load_gives_opacus_own_numbers_and_leaves_the_real_package_importable():
    out = python(
        """
        import sys
        from fedsim.privacy import opacus_accountants
        light = opacus_accountants.load()
        assert "torch" not in sys.modules, "the accountants pulled in torch"
        assert not [n for n in sys.modules if n == "opacus" or n.startswith("opacus.")], "stubs left behind"
        hist = [(1.5, 0.04, 2250)]
        mine = []
        for cls in (light.accountants.RDPAccountant, light.accountants.PRVAccountant):
            a = cls(); a.history = list(hist); mine.append(a.get_epsilon(1e-5))
        import opacus
        from opacus import PrivacyEngine
        from opacus.accountants import PRVAccountant, RDPAccountant
        assert RDPAccountant is not light.accountants.RDPAccountant  # the real package loaded its own
        real = []
        for cls in (RDPAccountant, PRVAccountant):
            a = cls(); a.history = list(hist); real.append(a.get_epsilon(1e-5))
        print(mine == real, mine[0])
        """
    )
    same, rdp = out.split()
    assert same == "True"
    assert abs(float(rdp) - 7.32911117143) < 1e-6  # opacus/tests/accountants_test.py test_rdp_accountant


def test_after_the_real_import_the_loader_uses_the_real_modules():
    out = python(
        """
        import opacus.accountants
        from fedsim.privacy import opacus_accountants
        print(opacus_accountants.load().accountants is opacus.accountants)
        """
    )
    assert out.strip() == "True"


def test_client_level_report_imports_neither_opacus_training_stack_nor_pyplot_nor_torch(tmp_path):
    # What made `fedsim privacy` slow: opacus' package __init__ (its PrivacyEngine, samplers and torch.distributed),
    # the strategies, pyplot, and torch itself (through the dataset and model registries, which fill in the chosen
    # dataset's and model's defaults; they import torch only where tensors are made, tests/privacy/test_light_imports.py).
    sc = tmp_path / "s.yaml"
    sc.write_text(
        "name: p\nrounds: 50\npopulation: {clients: 100}\nstrategy: {clients_per_round: 10}\n"
        "data: {dataset: synthetic, partitioner: iid}\n"
        "privacy: {level: client, clip: 1.0, noise_multiplier: 1.1, accountants: [rdp, prv, pld]}\n"
    )
    out = python(
        f"""
        import sys
        from typer.testing import CliRunner
        from fedsim.cli import app
        res = CliRunner().invoke(app, ["privacy", {str(sc)!r}, "-o", {str(tmp_path / "r")!r}])
        assert res.exit_code == 0, res.output
        print(sorted(m for m in ("opacus.privacy_engine", "matplotlib.pyplot", "strategies", "datasets", "flwr", "torch") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"
