"""A client-level DP run's checkpoint holds its noise stream, readable by the owner only: a strategy resumed from
the file draws exactly the noise the uninterrupted one draws (oracle: the uninterrupted run itself)."""

from __future__ import annotations

import stat

import torch

from fedsim.gradcore.dp import seeded_generator
from fedsim.results import RunDir
from fedsim.scenario import parse_scenario
from strategies import ReducedUpdates
from strategies.dp import ClientLevelDP
from strategies.fedavg import FedAvg

PARAMS = {"w": torch.zeros(6, dtype=torch.float64)}


def dp() -> ClientLevelDP:
    return ClientLevelDP(
        inner=FedAvg(clients_per_round=5, server_optimizer={"name": "sgd", "lr": 1.0}),
        population=50,
        noise_multiplier=1.0,
        clip=1.0,
        generator=seeded_generator(3),
        adaptive=True,
        count_noise=2.0,
    )


def rounds(strategy, params, state, n):
    out = []
    for _ in range(n):
        up = ReducedUpdates({"w": torch.full((6,), 0.1, dtype=torch.float64)}, 2.0, 2, (0.5, 2.0))
        res = strategy.aggregate(state, params, up)
        params, state = res.params, res.state
        out.append((params["w"].clone(), state.clip))
    return params, state, out


def test_the_checkpoint_file_holds_the_noise_stream_and_is_private(tmp_path):
    sc = parse_scenario(
        {
            "name": "c",
            "rounds": 5,
            "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
        }
    )
    strategy = dp()
    params, state, _ = rounds(strategy, PARAMS, strategy.init(PARAMS), 2)
    run = RunDir(tmp_path, sc)
    run.save_checkpoint(round=2, params=params, strategy_state=state)
    run.close()
    _, _, straight = rounds(strategy, params, state, 3)
    path = tmp_path / "checkpoints" / "round-2.pt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = torch.load(path, weights_only=False)
    _, _, resumed = rounds(dp(), saved["params"], saved["strategy_state"], 3)
    for (w1, c1), (w2, c2) in zip(straight, resumed, strict=True):
        assert torch.equal(w1, w2) and c1 == c2  # the update noise and the adaptive count noise
