"""Shards and supersteps: splitting a gossip network over shards (as the engine's workers do) gives the run of one
process; pull and push-pull against hand computations; a shard saved and restored goes on as if never stopped."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from test_gossip_simulator import LR, node, sgd_step, sim, stacked_init, tiny_data
from torch import nn

from fedsim.gossip import GossipConfig, build_topology, neighbour_lists
from fedsim.gossip.schedule import Schedule, profile_intervals
from fedsim.gossip.shard import GossipShard
from fedsim.gossip.simulator import evaluate_nodes
from fedsim.gossip.supersteps import gather, run_in_process


def split_run(graph, shards: int, *, ticks: int, eval_every: int, per_node: int = 4, **cfg):
    """Run the network as ``shards`` shards through the superstep coordinator; return evaluation rows and the
    final models (global order)."""
    n = graph.number_of_nodes()
    config = GossipConfig(
        **{"optimizer_args": {"lr": LR}, "batch_size": per_node, "eval_every": eval_every, **cfg}
    )
    data, params, neighbours = tiny_data(n, per_node), stacked_init(n), neighbour_lists(graph)
    owner = np.arange(n) % shards
    owned = [np.flatnonzero(owner == s) for s in range(shards)]
    parts = [
        GossipShard(
            nn.Linear(3, 2),
            data,
            neighbours,
            o,
            {k: v[torch.from_numpy(o)] for k, v in params.items()},
            config.protocol(),
            config.schedule(),
        )  # fmt: skip
        for o in owned
    ]
    rows = []

    def on_eval(tick, reports):
        p = gather([r.params for r in reports], owned)
        counts = {k: sum(r.counts[k] for r in reports) for k in reports[0].counts}
        rows.append({"tick": tick, **counts, **evaluate_nodes(nn.Linear(3, 2), p, data.test_x, data.test_y)})

    run_in_process(parts, owner, horizon=ticks, eval_every=eval_every, on_eval=on_eval)
    return rows, gather([s.params for s in parts], owned)


def one_process(graph, *, ticks: int, eval_every: int, per_node: int = 4, **cfg):
    s = sim(graph, per_node=per_node, eval_every=eval_every, **cfg)
    rows = s.run(ticks)
    keep = ("tick", "trained", "sent", "merges", "timeout_merges", "failed", "test_accuracy_mean")
    return [{k: r[k] for k in keep} | {"consensus": r["consensus_distance"]} for r in rows], s.params


CASES = [
    {"mode": "push"},
    {"mode": "pull"},
    {"mode": "push-pull"},
    {"mode": "push", "availability": 0.6, "timeout": 15},
    {"mode": "pull", "availability": 0.7, "timeout": 12, "failure": 0.2},
    {"mode": "push-pull", "availability": 0.8, "timeout": 20, "unit": "epoch", "batch_size": 2},
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("shards", [2, 3])
def test_a_split_network_runs_as_one_process(cfg, shards):
    graph = build_topology("regular", nodes=9, args={"k": 4}, seed=1)
    want_rows, want = one_process(graph, ticks=150, eval_every=30, **cfg)
    rows, got = split_run(graph, shards, ticks=150, eval_every=30, **cfg)
    assert [r["tick"] for r in rows] == [r["tick"] for r in want_rows] == [0, 30, 60, 90, 120, 150]
    for a, b in zip(rows, want_rows, strict=True):
        for k in ("trained", "sent", "merges", "timeout_merges", "failed"):
            assert a[k] == b[k], (a["tick"], k)
        assert a["test_accuracy_mean"] == pytest.approx(b["test_accuracy_mean"])
        assert a["consensus_distance"] == pytest.approx(b["consensus"], rel=1e-4)
    assert want_rows[-1]["merges"] > 0
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5)


def test_pull_fetches_the_neighbours_models_after_their_training():
    # every node trains at tick 10 and pulls its neighbours' trained models: the merge equals push's here
    s = sim(nx.complete_graph(3), rule="plain", beta=0.5, interval=(10, 10), mode="pull")
    init = {k: v.clone() for k, v in s.params.items()}
    s.run(10)
    trained = [sgd_step(node(init, i), *s.data.client_data(i)) for i in range(3)]
    for i in range(3):
        for k in ("weight", "bias"):
            others = sum(trained[j][k] for j in range(3) if j != i) / 2
            assert torch.allclose(s.params[k][i], 0.5 * trained[i][k] + 0.25 * 2 * others, atol=1e-6)
    assert s.counts["sent"] == 6 and s.counts["merges"] == 3


def test_push_pull_receives_each_neighbour_twice_and_merges_once():
    s = sim(nx.path_graph(2), rule="plain", beta=0.0, interval=(10, 10), mode="push-pull")
    init = {k: v.clone() for k, v in s.params.items()}
    s.run(10)
    trained = [sgd_step(node(init, i), *s.data.client_data(i)) for i in range(2)]
    for i in range(2):  # the buffer holds the neighbour's model twice (its push and the answer to the pull)
        for k in ("weight", "bias"):
            assert torch.allclose(s.params[k][i], trained[1 - i][k], atol=1e-6)
    assert s.counts["sent"] == 4 and s.counts["merges"] == 2


def test_offline_nodes_neither_pull_nor_answer_pulls():
    s = sim(nx.star_graph(4), rule="plain", beta=0.0, interval=(7, 13), mode="pull", availability=0.5, seed=5)
    offline_seen = 0
    while True:
        before = [list(b) for b in s.buffers]
        params = {k: v.clone() for k, v in s.params.items()}
        if not s.advance(300):
            break
        for i in np.flatnonzero(~s.online):  # offline now: it got nothing and its model did not change
            offline_seen += 1
            assert s.buffers[i] == before[i]
            assert all(torch.equal(s.params[k][i], params[k][i]) for k in params)
    assert offline_seen > 0 and s.counts["sent"] > 0 and s.counts["merges"] > 0


def test_a_saved_shard_goes_on_as_if_never_stopped():
    graph = build_topology("regular", nodes=8, args={"k": 3}, seed=2)
    config = GossipConfig(
        optimizer_args={"lr": LR}, batch_size=4, availability=0.7, timeout=15, mode="push-pull"
    )

    def shard():
        return GossipShard(
            nn.Linear(3, 2), tiny_data(8), neighbour_lists(graph), np.arange(8), stacked_init(8),
            config.protocol(), config.schedule(),
        )  # fmt: skip

    a, b = shard(), shard()
    for t in range(1, 61):
        for s in (a, b):
            s.phase_a(t)
        if t % 7 == 0:  # b restarts from its saved state between the phases (pending mail in flight)
            saved = b.state()
            b = shard()
            b.load_state(saved)
        for s in (a, b):
            s.phase_b(t)
    assert a.counts == b.counts and a.counts["merges"] > 0
    assert [list(x) for x in a.buffers] != [] and [len(x) for x in a.buffers] == [len(x) for x in b.buffers]
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])


def test_profile_intervals_follow_speed_bandwidth_and_fanout():
    gaps = profile_intervals(
        np.array([10.0, 100.0]), np.array([1e3, 1e6]), work=np.array([20, 20]), model_bytes=500,
        fanout=np.array([4, 4]), tick_s=0.1,
    )  # fmt: skip
    # node 0: 20/10 + 4*500/1e3 = 4 s = 40 ticks; node 1: 0.2 + 0.002 = 0.202 s -> 3 ticks
    assert gaps.tolist() == [40, 3]
    sched = Schedule(seed=0, fixed=gaps)
    first = sched.first_events(np.array([0, 1]))
    assert 1 <= first[0] <= 40 and 1 <= first[1] <= 3
    assert sched.gaps(np.array([0, 1]), np.array([5, 5])).tolist() == [40, 3]


def test_the_horizon_is_evaluated_when_it_is_not_a_multiple_of_the_period():
    graph = build_topology("ring", nodes=6)
    rows, final = split_run(graph, 2, ticks=50, eval_every=30)
    assert [r["tick"] for r in rows] == [0, 30, 50]
    data = tiny_data(6)  # the last row is the final state
    last = evaluate_nodes(nn.Linear(3, 2), final, data.test_x, data.test_y)
    assert rows[-1]["consensus_distance"] == last["consensus_distance"]
