"""Each hostile input of the audit (fedsim issue 16) through the CLI: one line, exit 2, nothing written; and
validation builds nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedsim.errors import ConfigError
from fedsim.scenario import load_scenario
from fedsim.scenario.checks import BYTES_PER_CLIENT, WORKERS_PER_CORE, check_population, check_workers
from tests.cli_helpers import assert_one_line_user_error, fedsim_cli

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
name: hostile
rounds: 2
data: {dataset: digits, partitioner: iid}
population:
  clients: 20
model: {name: mlp, args: {hidden: [8]}}
client: {optimizer: {name: sgd, lr: 0.1}}
strategy: {name: fedavg, clients_per_round: 5}
"""


@pytest.fixture
def no_training(monkeypatch):
    import fedsim.run

    def refuse(*args, **kwargs):
        raise AssertionError("a hostile scenario reached run_scenario")

    monkeypatch.setattr(fedsim.run, "run_scenario", refuse)


def scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text + f"output: {{dir: {tmp_path / 'runs'}}}\n")
    return path


HOSTILE = [
    ("client: {optimizer: {name: sgd, lr: .nan}}\n", "client.optimizer.lr must be a finite number. Got nan."),
    ("client: {optimizer: {name: sgd, lr: .inf}}\n", "client.optimizer.lr must be a finite number. Got inf."),
    ("population: {clients: 1000000000000}\n", "population.clients must be at most"),
    (
        "population: {clients: 20, devices: {speed: {dist: constant, value: -5.0}}}\n",
        "population.devices.speed: must be a distribution of positive values: constant needs value > 0",
    ),
    (
        "population: {clients: 20, devices: {bandwidth: {dist: uniform, low: -1.0, high: 3.0}}}\n",
        "population.devices.bandwidth: must be a distribution of positive values: uniform needs low > 0",
    ),
    (
        "population: {clients: 20, devices: {speed: {dist: normal, mean: 10.0, sigma: 5.0}}}\n",
        "normal needs mean > 0 and sigma <= mean / 4",
    ),
    (
        "population: {clients: 20, devices: {speed: {dist: lognormal, mean: -1.0, sigma: 0.5}}}\n",
        "lognormal needs mean > 0",
    ),
    ("population: {clients: 20, devices: {availability: 0.0}}\n", "population.devices.availability"),
    ("engine: {workers: 1000000}\n", "engine.workers must be 'auto' or at most"),
    (
        "engine: {backend: inprocess, ray_address: 'auto'}\n",
        "engine.ray_address must be unset with engine.backend 'inprocess'",
    ),
    ("rounds: true\n", "rounds must be an integer. Got True."),
    (
        "data: {dataset: digits, partitioner: iid, test_fraction: true}\n",
        "data.test_fraction must be a number",
    ),
    (
        "model: {name: mlp, args: {hidden: big}}\n",
        "model.args.hidden must be a list of integers >= 1. Got 'big'.",
    ),
    ("data: {dataset: digits, partitioner: dirichlet, partitioner_args: {alpha: true}}\n", "alpha must be"),
    ("seed: 3\nseed: 4\n", "duplicate key 'seed' (first on line"),
]


@pytest.mark.parametrize(("extra", "expected"), HOSTILE)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_hostile_settings_are_one_line_exit_2_and_write_nothing(
    tmp_path, no_training, command, extra, expected
):
    # the extra block comes after BASE, so it replaces BASE's key of the same name
    keys = {line.split(":")[0] for line in extra.splitlines() if line and not line.startswith(" ")}
    kept = [block for block in BASE.split("\n") if block.split(":")[0] not in keys or block.startswith(" ")]
    text = (
        "\n".join(b for b in kept if not (b.startswith("  clients") and "population" in keys)) + "\n" + extra
    )
    path = scenario(tmp_path, text)
    assert_one_line_user_error(fedsim_cli(command, str(path)), str(path), expected)
    assert not (tmp_path / "runs").exists()


def test_output_dir_naming_a_file_is_one_line_exit_2_and_nothing_is_written(tmp_path, no_training):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    path = tmp_path / "s.yaml"
    path.write_text(BASE + f"output: {{dir: {blocker}}}\n")
    for command in ("validate", "run"):
        assert_one_line_user_error(
            fedsim_cli(command, str(path)), "output.dir must be a folder", str(blocker)
        )
    ok = tmp_path / "ok.yaml"
    ok.write_text(BASE + f"output: {{dir: {tmp_path / 'runs'}}}\n")
    assert_one_line_user_error(
        fedsim_cli("run", str(ok), "--output", str(blocker)), "--output must be a folder"
    )
    assert blocker.read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml", "results.txt", "s.yaml"]


def test_new_run_dir_under_a_file_is_a_config_error(tmp_path):
    from fedsim.errors import ConfigError
    from fedsim.results import new_run_dir

    blocker = tmp_path / "f"
    blocker.write_text("")
    sc = load_scenario(scenario(tmp_path, BASE))
    with pytest.raises(ConfigError, match="--output must be a folder"):
        new_run_dir(sc, root=blocker / "deeper")


def test_population_bound_keeps_ten_million_clients_and_refuses_what_memory_cannot_hold():
    check_population(10**7)  # a later issue wants 10^6..10^7-client runs: never refused for being too many
    one_gib = 2**30
    check_population(one_gib // BYTES_PER_CLIENT, memory=one_gib)
    with pytest.raises(ConfigError, match="population.clients must be at most"):
        check_population(one_gib // BYTES_PER_CLIENT + 1, memory=one_gib)


def test_workers_bound_is_per_core_and_skipped_on_a_cluster(tmp_path):
    sc = load_scenario(scenario(tmp_path, BASE + "engine: {workers: 8}\n"))
    check_workers(sc, cores=2)  # 4 per core: 8 is the most on 2 cores
    with pytest.raises(ConfigError, match=r"engine.workers must be 'auto' or at most 4 \(4 per core"):
        check_workers(sc, cores=1)
    cluster = load_scenario(scenario(tmp_path, BASE + "engine: {workers: 8, ray_address: 'auto'}\n"))
    check_workers(cluster, cores=1)
    assert WORKERS_PER_CORE == 4


def test_validation_builds_nothing_and_writes_no_cache(tmp_path, monkeypatch):
    """Every shipped scenario validates with the dataset loaders, partitioners, model and graph builders all
    replaced by functions that fail, and with an empty cache folder that stays empty."""
    import fedsim.engine.setup
    import fedsim.gossip.topology
    from fedsim.data.base import DATASETS, PREFIXED_DATASETS
    from fedsim.data.partitioners import PARTITIONERS

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(cache))

    def built(*args, **kwargs):
        raise AssertionError("validation built something")

    for registry in (DATASETS, PREFIXED_DATASETS, PARTITIONERS):
        for name in registry.names():
            original = registry._items[name]
            stand_in = lambda *a, **k: built()  # noqa: E731
            stand_in.arg_spec = original.arg_spec  # type: ignore[attr-defined]
            stand_in.task = getattr(original, "task", "classification")  # type: ignore[attr-defined]
            monkeypatch.setitem(registry._items, name, stand_in)
    for module, name in [
        (fedsim.engine.setup, "build_data"),
        (fedsim.engine.setup, "load_data"),
        (fedsim.engine.setup, "build_initial_model"),
        (fedsim.gossip.topology, "build_topology"),
        (fedsim.gossip.topology.nx, "random_regular_graph"),
    ]:
        monkeypatch.setattr(module, name, built)
    files = sorted(str(p) for p in (ROOT / "scenarios").glob("*.yaml"))
    outcome = fedsim_cli("validate", *files)
    assert outcome.code == 0, outcome
    assert outcome.err == "", outcome.err  # no progress bar, no warning
    assert outcome.out.count(": ok (") == len(files)
    assert list(cache.iterdir()) == []


def test_validation_is_fast_after_imports():
    import time

    files = sorted((ROOT / "scenarios").glob("*.yaml"))
    load_scenario(files[0])  # imports
    start = time.perf_counter()
    for f in files:
        load_scenario(f)
    per_file = (time.perf_counter() - start) / len(files)
    assert per_file < 0.25, f"{per_file:.3f} s per file"  # well under the 1 s asked; ~0.01 s measured idle


def test_check_before_run_still_refuses_what_needs_the_built_data(tmp_path):
    from fedsim.engine.preflight import check_before_run
    from fedsim.errors import ConfigError

    # digits has 1437 training rows: 5000 clients cannot each get one; a pure check cannot know the row count
    sc = load_scenario(scenario(tmp_path, BASE.replace("clients: 20", "clients: 5000")))
    with pytest.raises(
        ConfigError, match="population.clients must be at most the number of training examples"
    ):
        check_before_run(sc)
    assert os.environ.get("FEDSIM_CACHE_DIR")  # the pre-run check may use the data cache
