"""GPU sharing settings: Ray resources per worker, and the same results on a machine without a GPU."""

from __future__ import annotations

import os

import pytest
import torch
from local_grid import LocalGrid, MemoryRecorder
from test_engine_local import SMALL

from fedsim.engine.server import Engine
from fedsim.engine.simulation import backend_config, gpu_share, resolve_workers
from fedsim.scenario import parse_scenario


def scenario(**engine):
    return parse_scenario({**SMALL, "engine": engine})


def test_fractional_gpus_put_several_workers_on_one_gpu():
    sc = scenario(gpus_per_worker=0.25)
    assert resolve_workers(sc, gpus=1) == 4
    assert resolve_workers(sc, gpus=2) == 8
    assert backend_config(sc, 4, gpus=1)["client_resources"]["num_gpus"] == 0.25
    assert resolve_workers(scenario(gpus_per_worker=0.25, workers=3), gpus=1) == 3  # explicit count wins


def test_without_a_gpu_the_share_is_dropped_and_workers_follow_the_cores():
    sc = scenario(gpus_per_worker=0.5)
    assert gpu_share(sc, gpus=0) == 0.0
    assert resolve_workers(sc, gpus=0) == max(1, os.cpu_count() or 1)
    assert (
        backend_config(sc, 2, gpus=0)["client_resources"]["num_gpus"] == 0.0
    )  # Ray would wait forever for a GPU


def test_a_gpu_scenario_gives_the_same_run_on_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the shared run trains on the GPU; this compares CPU-only runs")
    runs = []
    for engine in ({}, {"gpus_per_worker": 0.5}):
        rec = MemoryRecorder()
        Engine(parse_scenario({**SMALL, "engine": engine}), rec, expected_workers=2).run(LocalGrid([1, 2]))
        runs.append([(r["train_loss"], r["test_accuracy"]) for r in rec.rows])
    assert runs[0] == runs[1]
