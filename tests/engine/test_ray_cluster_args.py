"""What ``ray_cluster`` hands ``ray.init``, without starting Ray: the driver's ``sys.path`` reaches the workers
either way, through the environment a local cluster inherits or through an existing cluster's runtime
environment, and a local cluster gets no runtime environment (with one, every actor process is started through
Ray's runtime-env agent instead of being handed a worker Ray started already)."""

from __future__ import annotations

import os
import sys

import pytest
import ray

from fedsim.engine import ray_guard


@pytest.fixture
def calls(monkeypatch):
    seen: list[tuple[dict, str]] = []
    monkeypatch.setattr(ray_guard, "_init_ray", lambda args, stop: seen.append((dict(args), os.environ["PYTHONPATH"])))
    monkeypatch.setattr(ray_guard, "start_watchdog", lambda token, temp_dir: None)
    monkeypatch.setattr(ray_guard, "kill_run", lambda *a, **k: None)
    monkeypatch.setattr(ray_guard, "check_reachable", lambda address: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    return seen


def test_a_local_cluster_inherits_the_path_and_has_no_runtime_environment(calls):
    with ray_guard.ray_cluster({"include_dashboard": False}):
        pass
    [(args, pythonpath)] = calls
    assert "runtime_env" not in args and args["include_dashboard"] is False and "_temp_dir" in args
    assert args["_system_config"] == ray_guard.LOCAL_SYSTEM_CONFIG
    assert set(sys.path) <= set(pythonpath.split(os.pathsep))


def test_an_existing_cluster_gets_the_path_in_its_runtime_environment(calls):
    with ray_guard.ray_cluster({"address": "127.0.0.1:6379"}):
        pass
    [(args, pythonpath)] = calls
    assert args["address"] == "127.0.0.1:6379" and "_temp_dir" not in args and "_system_config" not in args
    assert args["runtime_env"] == {"env_vars": {"PYTHONPATH": pythonpath}}
    assert set(sys.path) <= set(pythonpath.split(os.pathsep))
