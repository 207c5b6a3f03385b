"""What validating a scenario and reporting its privacy import: no torch, and only the accountants named.

Why: torch's import alone takes seconds, as does scipy.signal's (pulled in by dp_accounting and opacus' PRV), and
``fedsim privacy`` of a client-level scenario needs neither torch nor data (issue 16: 10 000 clients × 10 000
rounds × three accountants within 5 s, ``bench/privacy_cli.py``). The registries (``fedsim.data``,
``fedsim.models``) therefore declare their names and ``ArgSpec``s without torch and import it where tensors are
made; a module-level ``import torch`` put back into any of their modules fails the first test.

Each check runs in a fresh interpreter (the test process has torch imported already).
"""

from __future__ import annotations

from pathlib import Path

from tests.fresh_python import python


def test_registries_declare_and_resolve_every_choice_without_torch():
    out = python(
        """
        import sys
        import fedsim.data, fedsim.models, fedsim.data.sizes  # every dataset and model module registers itself
        from fedsim.data.base import DATASETS
        from fedsim.data.federated import resolve_dataset_args
        from fedsim.data.partitioners import PARTITIONERS, resolve_partitioner_args
        from fedsim.models.registry import MODELS, resolve_model_args
        from fedsim.scenario import parse_scenario

        for name in DATASETS.names():
            resolve_dataset_args(name, {})
        for name in PARTITIONERS.names():
            resolve_partitioner_args(name, {})
        for name in MODELS.names():
            resolve_model_args(name, {})
        parse_scenario({"name": "s", "data": {"dataset": "blobs"}, "model": {"name": "cnn"}})
        mods = [m for m in sys.modules if m.startswith(("fedsim.data.", "fedsim.models."))]
        print(len(DATASETS.names()), len(MODELS.names()), len(mods), sorted(m for m in sys.modules if m == "torch"))
        """
    )
    datasets, models, modules, torch = out.strip().split(maxsplit=3)
    assert int(datasets) >= 5 and int(models) >= 3 and int(modules) >= 10, out
    assert torch == "[]", "a registry module imports torch at module level (import it where tensors are made)"


def test_models_and_data_still_build_with_torch_imported_on_demand():
    out = python(
        """
        import sys
        from fedsim.data import load_federated_data
        from fedsim.models import build_model

        fd = load_federated_data(dataset="blobs", args={"shape": [16]}, partitioner="iid", partitioner_args={},
                                 test_fraction=0.2, num_clients=3, seed=0)
        shapes = []
        for name, args in (("mlp", {"activation": "softplus"}), ("cnn", {}), ("simple_cnn", {})):
            shape = (1, 8, 8) if name == "simple_cnn" else fd.input_shape
            import torch
            model = build_model(name, args, input_shape=shape, num_classes=fd.num_classes, seed=0)
            shapes.append(tuple(model(torch.zeros(2, *shape)).shape))
        x, y = fd.client_data(1)
        print(shapes == [(2, fd.num_classes)] * 3, type(x).__module__, len(x) == len(y) == fd.num_examples(1))
        """
    )
    assert out.split() == ["True", "torch", "True"], out


def _scenario(tmp_path: Path, privacy: str, data: str = "{dataset: synthetic, partitioner: iid}") -> Path:
    sc = tmp_path / "s.yaml"
    sc.write_text(
        f"name: p\nrounds: 50\npopulation: {{clients: 100}}\nstrategy: {{clients_per_round: 10}}\ndata: {data}\n"
        f"privacy: {privacy}\n"
    )
    return sc


def _report_imports(tmp_path: Path, sc: Path, modules: tuple[str, ...]) -> str:
    return python(
        f"""
        import sys
        from typer.testing import CliRunner
        from fedsim.cli import app
        res = CliRunner().invoke(app, ["privacy", {str(sc)!r}, "-o", {str(tmp_path / "r")!r}])
        assert res.exit_code == 0, res.output
        print(sorted(m for m in {modules!r} if m in sys.modules))
        """
    ).strip()


def test_client_level_report_imports_no_torch(tmp_path):
    sc = _scenario(
        tmp_path, "{level: client, clip: 1.0, noise_multiplier: 1.1, accountants: [rdp, prv, pld]}"
    )
    assert _report_imports(tmp_path, sc, ("torch", "fedsim.engine", "fedsim.gossip")) == "[]"


def test_an_rdp_only_report_does_not_import_dp_accounting(tmp_path):
    # (opacus' rdp does the poisson accounting; dp_accounting is for pld and fixed_size sampling)
    sc = _scenario(tmp_path, "{level: client, clip: 1.0, noise_multiplier: 1.1, accountants: [rdp]}")
    assert _report_imports(tmp_path, sc, ("torch", "dp_accounting")) == "[]"


def test_sample_level_plan_reads_partition_sizes_without_torch():
    # `fedsim privacy` of a sample-level scenario also checks every registered name (strategies, optimizers), which
    # imports torch; the plan itself needs the partition sizes only.
    out = python(
        """
        import sys
        from fedsim.privacy.plan import plan_from_scenario
        from fedsim.scenario import parse_scenario
        sc = parse_scenario({"name": "s", "rounds": 5, "population": {"clients": 20},
                             "data": {"dataset": "synthetic", "partitioner": "iid"},
                             "client": {"batch_size": 8},
                             "privacy": {"level": "sample", "noise_multiplier": 1.0, "accountants": ["rdp"]}})
        plan = plan_from_scenario(sc)
        print(len(plan.groups) > 0, "torch" in sys.modules)
        """
    )
    assert out.split() == ["True", "False"], out
