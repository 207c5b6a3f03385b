"""Workers and their Ray shares from the nodes' resources (``fedsim.engine.resources``): the same sizing for this
machine and for an existing cluster, without Ray."""

from __future__ import annotations

import pytest
from test_engine_local import SMALL

from fedsim.engine.resources import (
    cpus_per_worker,
    describe_cluster,
    gpu_slots,
    workers_for,
    workers_that_fit,
)
from fedsim.engine.simulation import backend_config, backend_workers, resolve_workers
from fedsim.errors import ConfigError
from fedsim.scenario import parse_scenario
from fedsim.scenario.backend import BackendChoice
from fedsim.scenario.checks import WORKERS_PER_CORE, check_workers


def scenario(**engine):
    return parse_scenario({**SMALL, "engine": engine})


def node(cpus: float, gpus: float = 0) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus}


def test_auto_counts_the_cluster_cpus_not_this_machine_cores():
    two_raylets = [node(1), node(1)]
    sc = scenario(ray_address="127.0.0.1:6379")
    assert resolve_workers(sc, nodes=two_raylets) == 2
    assert backend_config(sc, 2, nodes=two_raylets)["client_resources"]["num_cpus"] == 1
    big = [node(32), node(32), node(0)]  # a head started with --num-cpus=0 hosts no worker
    assert resolve_workers(sc, nodes=big) == 64
    assert backend_config(sc, 8, nodes=big)["client_resources"]["num_cpus"] == 8  # 4 per node, 8 CPUs each


def test_each_worker_gets_the_most_cpus_that_still_place_every_worker_at_once():
    uneven = [node(1), node(7)]
    # 8 CPUs / 4 workers = 2 would leave one worker unplaced (0 on the 1-CPU node, 3 on the other)
    assert workers_that_fit(uneven, 2, 0.0) == 3
    assert cpus_per_worker(uneven, 4, 0.0) == 1
    assert cpus_per_worker(uneven, 2, 0.0) == 3  # both on the 7-CPU node, 3 CPUs each
    assert workers_that_fit(uneven, 3, 0.0) == 2
    # more workers than CPUs: nothing places them all; an even split, at least 1
    assert cpus_per_worker([node(2), node(2)], 9, 0.0) == 1


@pytest.mark.parametrize("cores", [1, 2, 3, 8, 16, 64])
@pytest.mark.parametrize("workers", [1, 2, 3, 5, 8, 40])
def test_on_one_machine_the_share_is_cores_over_workers_as_before(cores, workers):
    assert cpus_per_worker([node(cores)], workers, 0.0) == max(1, cores // workers)
    assert cpus_per_worker([node(cores, 1)], workers, 0.25) == max(1, cores // workers)


def test_gpu_shares_below_one_stay_on_one_gpu_of_one_node():
    assert gpu_slots(1, 0.25) == 4 and gpu_slots(2, 0.25) == 8
    assert gpu_slots(3, 0.4) == 6  # 2 per GPU, not 3 / 0.4 = 7.5
    assert gpu_slots(4, 2) == 2 and gpu_slots(0, 0.5) == 0
    sc = scenario(gpus_per_worker=0.25, ray_address="10.0.0.1:6379")
    cluster = [node(8), node(16, 2), node(16, 1)]  # a CPU-only head, two GPU machines
    assert workers_for(sc, cluster) == 12
    res = backend_config(sc, 12, nodes=cluster)["client_resources"]
    assert res["num_gpus"] == 0.25
    assert res["num_cpus"] == 2  # 8 workers on the 2-GPU node: 16 // 8
    assert workers_that_fit(cluster, 2, 0.25) == 12


def test_a_cluster_without_gpus_drops_the_share_and_counts_cpus():
    sc = scenario(gpus_per_worker=0.5, ray_address="10.0.0.1:6379")
    cluster = [node(4), node(4)]
    assert workers_for(sc, cluster) == 8
    assert backend_config(sc, 8, nodes=cluster)["client_resources"]["num_gpus"] == 0.0


def test_an_integer_worker_count_is_kept_whatever_the_cluster():
    sc = scenario(workers=12, ray_address="10.0.0.1:6379")
    assert resolve_workers(sc, nodes=[node(1), node(1)]) == 12
    # validation refuses more than 4 per local core on a local run only: a cluster sizes its own
    check_workers(sc, cores=1)
    with pytest.raises(ConfigError, match="engine.workers"):
        check_workers(scenario(workers=WORKERS_PER_CORE + 1), cores=1)


def test_backend_workers_reads_no_cluster_unless_auto_on_an_address():
    inproc = BackendChoice("inprocess", "engine.backend: inprocess")
    assert backend_workers(scenario(workers="auto"), inproc) == 1
    ray = BackendChoice("ray", "engine.backend: ray")
    # an integer on a cluster: no connection needed (the address is not reachable here)
    assert backend_workers(scenario(workers=3, ray_address="127.0.0.1:1"), ray) == 3


def test_the_progress_line_names_the_cluster_resources():
    sc = scenario(ray_address="10.0.0.1:6379")
    nodes = [node(1), node(1)]
    line = describe_cluster("10.0.0.1:6379", nodes, 2, backend_config(sc, 2, nodes=nodes))
    assert line == "Ray cluster at 10.0.0.1:6379: 2 nodes, 2 CPUs, 0 GPUs; 2 workers of 1 CPU each"
    gpu = scenario(gpus_per_worker=0.5, ray_address="10.0.0.1:6379")
    nodes = [node(4, 1)]
    line = describe_cluster("h:1", nodes, 2, backend_config(gpu, 2, nodes=nodes))
    assert line == "Ray cluster at h:1: 1 node, 4 CPUs, 1 GPUs; 2 workers of 2 CPU and 0.5 GPU each"


def test_an_address_where_no_head_answers_is_one_config_error_before_the_run():
    import socket

    from fedsim.engine.preflight import check_before_run
    from fedsim.engine.ray_guard import check_reachable

    with socket.socket() as closed:  # a port nothing listens on (bound, not listening: connections refused)
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        with pytest.raises(ConfigError, match=r"engine.ray_address must be the host:port of a running Ray"):
            check_before_run(scenario(ray_address=address))
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        check_reachable(f"127.0.0.1:{head.getsockname()[1]}")
    check_reachable("auto")  # Ray's own ways of naming a cluster are left to Ray
    check_reachable("ray://head:10001")
