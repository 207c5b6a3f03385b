"""Client-level DP through the engine's round loop (in-process Grid, no Ray): ε and clipping statistics in every
row, and secure vs insecure noise."""

from __future__ import annotations

import pytest
import torch
from local_grid import LocalGrid, MemoryRecorder

from fedsim.engine.server import Engine
from fedsim.engine.setup import noise_generator
from fedsim.scenario import parse_scenario

SMALL = {
    "name": "small-dp",
    "seed": 1,
    "rounds": 3,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 40},
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "client": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedavg", "clients_per_round": 10},
}


def run_engine(privacy):
    sc = parse_scenario({**SMALL, "privacy": privacy})
    rec = MemoryRecorder()
    grid = LocalGrid([11, 22])
    Engine(sc, rec, expected_workers=2).run(grid)
    return rec


def test_engine_runs_dp_rounds_with_epsilon_and_clipping_in_every_row():
    privacy = {"noise_multiplier": 1.0, "clip": 0.5, "insecure_seed": True, "accountants": ["rdp"]}
    rec = run_engine({**privacy, "release_diagnostics": True})
    eps = [r["epsilon_rdp"] for r in rec.rows]
    assert eps == sorted(eps) and eps[0] > 0
    for r in rec.rows:
        assert r["dp_clip"] == 0.5 and 0.0 <= r["dp_clipped_fraction"] <= 1.0
        assert r["dp_noise_std"] == pytest.approx(0.5)


def test_insecure_seed_repeats_the_noise_and_the_default_does_not():
    insecure = {"noise_multiplier": 1.0, "insecure_seed": True, "accountants": ["rdp"]}
    a, b = run_engine(insecure), run_engine(insecure)
    assert [r["test_loss"] for r in a.rows] == [r["test_loss"] for r in b.rows]
    secure = {"noise_multiplier": 1.0, "accountants": ["rdp"]}
    c, d = run_engine(secure), run_engine(secure)
    # different noise (and different secret cohorts, tests/engine/test_engine_dp_trust.py): the models differ
    assert [r["test_loss"] for r in c.rows] != [r["test_loss"] for r in d.rows]
    # and directly: two generators for the same secure scenario draw different noise
    sc = parse_scenario({**SMALL, "privacy": secure})
    assert not torch.equal(
        torch.randn(8, generator=noise_generator(sc)), torch.randn(8, generator=noise_generator(sc))
    )
    sc = parse_scenario({**SMALL, "privacy": insecure})
    assert torch.equal(
        torch.randn(8, generator=noise_generator(sc)), torch.randn(8, generator=noise_generator(sc))
    )


@pytest.mark.parametrize("mode", ["global", "uniform"])
def test_both_cohort_trainers_clip_each_client_the_same(mode):
    """The clipping happens inside the vectorised trainer too, and agrees with the sequential one."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_vectorized import SIZES, data_with_sizes

    from fedsim.engine.cohort import train_cohort_sequential
    from fedsim.engine.vectorized import train_cohort_vectorized
    from fedsim.models import build_model
    from fedsim.protocol import ClientClip, ClientTask, TrainConfig

    data = data_with_sizes(SIZES)
    model = build_model("mlp", {}, input_shape=(64,), num_classes=10, seed=0)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    clip = ClientClip(max_norm=0.05, mode=mode, normalize_layers=mode == "uniform")
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="sgd", optimizer_args={"lr": 0.1}, clip=clip)
    tasks = [ClientTask(c, 100 + c) for c in range(len(SIZES))]
    seq = train_cohort_sequential(model, theta, tasks, data, cfg)
    vec = train_cohort_vectorized(model, theta, tasks, data, cfg)
    assert seq.client_ids == vec.client_ids and len(seq.update_norms) == len(SIZES)
    assert max(seq.update_norms) > 0.05  # the bound bites
    torch.testing.assert_close(
        torch.tensor(vec.update_norms), torch.tensor(seq.update_norms), rtol=1e-4, atol=0
    )
    for k in theta:
        torch.testing.assert_close(vec.weighted_delta_sum[k], seq.weighted_delta_sum[k], rtol=1e-4, atol=1e-6)
    total = torch.sqrt(sum((v.double() ** 2).sum() for v in seq.weighted_delta_sum.values()))
    assert float(total) <= 0.05 * len(SIZES) * (1 + 1e-6)  # a sum of K updates of norm <= C
