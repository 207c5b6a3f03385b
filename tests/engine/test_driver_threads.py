"""The driver of a local Ray run uses one torch thread (its workers take the cores); with a cluster it keeps its own."""

from __future__ import annotations

from pathlib import Path

import torch

from fedsim.engine.simulation import driver_threads
from fedsim.scenario import load_scenario


def test_a_local_run_drives_with_one_thread_and_restores_the_setting():
    scenario = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with driver_threads(scenario):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        remote = scenario.model_copy(
            update={"engine": scenario.engine.model_copy(update={"ray_address": "10.0.0.1:6379"})}
        )
        with driver_threads(remote):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
