"""The worker message schema round-trips through Flower records unchanged."""

from __future__ import annotations

import torch

from fedsim.engine.messages import (
    decode_train_reply,
    decode_train_request,
    encode_train_reply,
    encode_train_request,
)
from fedsim.protocol import ClientTask, WorkerResult


def test_request_round_trip():
    params = {"a.weight": torch.randn(3, 2), "a.bias": torch.randn(3)}
    tasks = [ClientTask(4, 123), ClientTask(9, 2**31 - 1)]
    scenario = {
        "name": "x",
        "client": {"epochs": 2, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.1}},
    }
    req = decode_train_request(encode_train_request(scenario=scenario, round=7, params=params, tasks=tasks))
    assert req.round == 7 and req.tasks == tuple(tasks) and req.scenario == scenario
    for k in params:
        assert torch.equal(req.params[k], params[k])
    cfg = req.train_config
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, dict(cfg.optimizer_args)) == (2, 4, "sgd", {"lr": 0.1})


def test_reply_round_trip_including_empty_lists():
    res = WorkerResult({"w": torch.arange(4.0)}, 12.0, [1, 5], [4, 8], [0.5, 0.25], [])
    back = decode_train_reply(encode_train_reply(res))
    assert torch.equal(back.weighted_delta_sum["w"], res.weighted_delta_sum["w"])
    assert (back.weight_sum, back.client_ids, back.num_examples, back.train_loss, back.failed) == (
        12.0,
        [1, 5],
        [4, 8],
        [0.5, 0.25],
        [],
    )
