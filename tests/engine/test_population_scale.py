"""Memory O(cohort) in the engine: a 10^6-client population costs its partition index and device profiles only.

Runs the real round loop (server + worker code, through the in-process grid) for one round of 100 clients out
of 10^6 and bounds both the start-up time and the memory traced per logical client.
"""

from __future__ import annotations

from local_grid import LocalGrid, MemoryRecorder, run_traced

from fedsim.engine.server import Engine
from fedsim.scenario import parse_scenario

CLIENTS = 1_000_000
# Traced bytes per client over a whole run, server and worker together (measured 141 B/client, printed below):
# building the partition index (row permutation 16 B, its packed copy 16 B, offsets 8 B, temporaries), reading
# it back from the machine's data cache (24 B) in the server and again in the worker (24 B), the device profiles
# (speed + bandwidth, 16 B) and a round's availability draw and online ids (16 B). One Python object per client
# (e.g. the online ids as a list: 40 B/client) breaks the bound.
TRACED_BYTES_PER_CLIENT = 160

SCENARIO = {
    "name": "million",
    "rounds": 1,
    "data": {
        "dataset": "blobs",
        "args": {"shape": [4], "samples_per_client": 2, "test_samples": 100},
        "partitioner": "iid",
        "partitioner_args": {},
    },
    "population": {"clients": CLIENTS},
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "client": {"epochs": 1, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedavg", "clients_per_round": 100},
}


def test_a_million_client_population_starts_fast_and_costs_no_per_client_objects(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(tmp_path))
    sc = parse_scenario(SCENARIO)
    rec, peak, wall = run_traced(sc)
    row = rec.rows[0]
    print(
        f"\n10^6 clients: run {wall:.2f} s (round {row['round_wall_s']:.2f} s), peak traced {peak / CLIENTS:.1f} B/client"
    )
    assert row["clients"] == 100 and row["dropped"] == 0
    assert peak < TRACED_BYTES_PER_CLIENT * CLIENTS
    assert wall < 60  # a few seconds on 2 cores (data generated once, mapped by the worker)


def test_a_mapped_parquet_run_equals_the_materialised_run(tmp_path, monkeypatch):
    """``parquet:`` with ``draw: client`` (rows read from the data cache per round) against ``draw: population``
    (the train split materialised): the same model after three rounds and the same metrics, bit for bit."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rng = np.random.default_rng(0)
    n = 1200
    x = rng.standard_normal((n, 5)).astype(np.float32)
    path = tmp_path / "rows.parquet"
    label = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    pq.write_table(
        pa.table({**{f"f{i}": x[:, i] for i in range(5)}, "label": label}), path, row_group_size=100
    )
    runs = []
    for draw in ("population", "client"):
        sc = parse_scenario(
            {
                "name": f"parquet-{draw}",
                "rounds": 3,
                "data": {
                    "dataset": f"parquet:{path}",
                    "args": {"draw": draw, "cache_dir": str(tmp_path / "hf")},
                    "partitioner": "dirichlet",
                    "partitioner_args": {"alpha": 0.5},
                },
                "population": {"clients": 30},
                "model": {"name": "mlp", "args": {"hidden": [8]}},
                "client": {"epochs": 1, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.1}},
                "strategy": {"name": "fedavg", "clients_per_round": 10},
            }
        )
        rec = MemoryRecorder()
        Engine(sc, rec, expected_workers=2).run(LocalGrid([1, 2]))
        runs.append(rec)
    pooled, mapped = runs
    assert all(torch.equal(pooled.final_params[k], mapped.final_params[k]) for k in pooled.final_params)
    keys = ("clients", "train_loss", "test_loss", "test_accuracy")
    assert [[r.get(k) for k in keys] for r in mapped.rows] == [[r.get(k) for k in keys] for r in pooled.rows]
    assert mapped.rows[-1]["test_accuracy"] is not None and all(r["train_loss"] > 0 for r in mapped.rows)
