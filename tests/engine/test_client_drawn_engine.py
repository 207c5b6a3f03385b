"""The engine on client-drawn data (``data.args.draw: client``): workers draw only a round's cohort.

A 10^6-client population of 784-float blobs (12.5 GB if materialised) starts in seconds and its traced memory
stays a few bytes per client; the result does not depend on how many workers share the clients.
"""

from __future__ import annotations

import pytest
import torch
from local_grid import LocalGrid, MemoryRecorder, run_traced

from fedsim.engine.server import Engine
from fedsim.scenario import parse_scenario

# Traced bytes per client over the whole run (server and two workers), measured 69 (printed below): the clients'
# sizes (8 B, built by the server and by each worker), a worker's cohort view offsets (8 B and its temporaries),
# the device profiles (16 B) and a round's availability draw. The examples would be 12 544 B per client.
TRACED_BYTES_PER_CLIENT = 120


def _scenario(clients: int, *, rounds: int = 1, cohort: int = 100, shape=(784,)) -> dict:
    return {
        "name": "client-drawn",
        "rounds": rounds,
        "data": {
            "dataset": "blobs",
            "args": {"shape": list(shape), "samples_per_client": 4, "test_samples": 100, "draw": "client"},
            "partitioner": "iid",
        },
        "population": {"clients": clients},
        "model": {"name": "mlp", "args": {"hidden": [8]}},
        "client": {"epochs": 1, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.1}},
        "strategy": {"name": "fedavg", "clients_per_round": cohort},
    }


def test_a_million_client_drawn_clients_start_in_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(tmp_path))
    sc = parse_scenario(_scenario(1_000_000))
    rec, peak, wall = run_traced(sc)
    row = rec.rows[0]
    print(f"\n10^6 client-drawn clients: run {wall:.2f} s, peak traced {peak / 1e6:.1f} B/client")
    assert row["clients"] == 100 and row["dropped"] == 0
    assert row["test_accuracy"] > 0.2  # chance is 0.1: one round on well-separated blobs
    assert peak < TRACED_BYTES_PER_CLIENT * 1_000_000
    assert not any(tmp_path.iterdir())  # nothing written to the data cache
    assert wall < 30  # ~1.5 s on 2 cores


def test_the_result_does_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
    """Oracle: the same run on one worker; each client's examples are its own draw wherever it trains."""
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(tmp_path))
    results = []
    for nodes in ([1], [1, 2, 3]):
        sc = parse_scenario(_scenario(500, rounds=3, cohort=20, shape=(6,)))
        rec = MemoryRecorder()
        Engine(sc, rec, expected_workers=len(nodes)).run(LocalGrid(nodes))
        results.append((rec.final_params, [r["train_loss"] for r in rec.rows]))
    (one, loss_one), (three, loss_three) = results
    assert all(torch.allclose(one[k], three[k], atol=1e-6) for k in one)
    assert loss_one == pytest.approx(loss_three, rel=1e-6)
