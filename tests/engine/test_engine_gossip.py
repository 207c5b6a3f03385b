"""Gossip on the engine (Ray-free, through the in-process grid and the real ClientApp): node models live on the
workers that own them, one message per worker per superstep, and the run equals one process running every node."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from local_grid import LocalGrid, MemoryRecorder

from fedsim.data import FederatedData
from fedsim.engine.gossip_network import build_shard
from fedsim.engine.preflight import check_before_run
from fedsim.engine.server import Engine
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.errors import ConfigError, EngineError
from fedsim.gossip.simulator import evaluate_nodes
from fedsim.gossip.supersteps import run_in_process
from fedsim.scenario import parse_scenario

BASE = {
    "name": "gossip-engine",
    "seed": 3,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 12},
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "client": {"batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "gossip"},
    "gossip": {
        "topology": {"kind": "regular", "args": {"k": 4}},
        "ticks": 60,
        "eval_every": 30,
        "timeout": 20,
    },
    "engine": {"workers": 3, "vectorize": "on"},
}


def scenario(batch_size=8, **gossip):
    client = {**BASE["client"], "batch_size": batch_size}
    return parse_scenario({**BASE, "client": client, "gossip": {**BASE["gossip"], **gossip}})


def run_engine(sc, workers=(11, 22, 33)):
    grid, rec = LocalGrid(list(workers)), MemoryRecorder()
    Engine(sc, rec, expected_workers=len(workers)).run(grid)
    return rec.rows, grid


def one_process(sc, data=None):
    data = build_data(sc) if data is None else data
    model = build_initial_model(sc, data)
    shard = build_shard(sc, data, model, np.arange(sc.population.clients))
    rows = []

    def on_eval(tick, reports):
        rows.append(
            {
                "tick": tick,
                **reports[0].counts,
                **evaluate_nodes(model, reports[0].params, data.test_x, data.test_y),
            }
        )

    g = sc.gossip_settings
    run_in_process(
        [shard],
        np.zeros(sc.population.clients, dtype=np.int64),
        horizon=g.ticks,
        eval_every=g.eval_every,
        on_eval=on_eval,
    )
    return rows


def assert_same_evaluations(rows, want):
    """The engine's evaluation rows equal the one-process run's: counters exactly, metrics to float tolerance."""
    assert [r["tick"] for r in rows] == [r["tick"] for r in want] == [0, 30, 60]
    for a, b in zip(rows, want, strict=True):
        for k in ("trained", "sent", "merges", "timeout_merges"):
            assert a[k] == b[k], (a["tick"], k)
        for k in ("test_accuracy_mean", "test_accuracy_avg_model", "consensus_distance"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["tick"], k)


@pytest.mark.parametrize(
    "gossip",
    [
        {"mode": "push"},
        {"mode": "pull", "rule": "plain"},
        {"mode": "push-pull", "unit": "epoch", "batch_size": 48},
    ],
    ids=["push", "pull-plain", "push-pull-epoch"],
)
def test_the_engine_runs_the_network_as_one_process_would(gossip):
    sc = scenario(**gossip)
    rows, grid = run_engine(sc)
    want = one_process(sc)
    assert_same_evaluations(rows, want)
    assert rows[-1]["merges"] > 0 and rows[-1]["models_across_workers"] > 0
    # one message per worker per superstep, every superstep to every worker
    supersteps = {}
    for step, node in grid.sent:
        supersteps.setdefault(step, []).append(node)
    assert all(sorted(nodes) == [11, 22, 33] for nodes in supersteps.values())


def test_results_do_not_depend_on_the_number_of_workers():
    sc = scenario(mode="push-pull")
    one, _ = run_engine(sc, workers=(5,))
    two, _ = run_engine(sc, workers=(5, 6))
    for a, b in zip(one, two, strict=True):
        assert a["merges"] == b["merges"] and a["sent"] == b["sent"]
        assert a["test_accuracy_mean"] == pytest.approx(b["test_accuracy_mean"], abs=1e-6)
    assert one[-1]["models_across_workers"] == 0 < two[-1]["models_across_workers"]


def test_offline_nodes_and_timeouts_on_the_engine():
    sc = parse_scenario(
        {
            **BASE,
            "population": {"clients": 12, "devices": {"availability": 0.6}},
            "gossip": {**BASE["gossip"], "timeout": 15},
        }
    )
    rows, _ = run_engine(sc)
    want = one_process(sc)
    assert [r["merges"] for r in rows] == [r["merges"] for r in want]
    assert rows[-1]["timeout_merges"] > 0 and min(r["online"] for r in rows[1:]) < 12


def test_device_profile_schedules_pace_the_nodes():
    fast = parse_scenario(
        {**BASE, "population": {"clients": 12, "devices": {"speed": {"dist": "constant", "value": 80.0}}},
         "gossip": {**BASE["gossip"], "schedule": "profile", "tick_s": 0.1}}
    )  # fmt: skip
    slow = parse_scenario(
        {**BASE, "population": {"clients": 12, "devices": {"speed": {"dist": "constant", "value": 20.0}}},
         "gossip": {**BASE["gossip"], "schedule": "profile", "tick_s": 0.1}}
    )  # fmt: skip
    rows_fast, _ = run_engine(fast)
    rows_slow, _ = run_engine(slow)
    # 8 examples at 80/s = 0.1 s (+ sending 4 models at 1e7 B/s) -> 2 ticks; at 20/s 0.4 s -> 5 ticks
    assert rows_fast[-1]["trained"] == pytest.approx(12 * 60 / 2, rel=0.1)
    assert rows_slow[-1]["trained"] == pytest.approx(12 * 60 / 5, rel=0.1)


def test_a_worker_that_lost_its_state_stops_the_run_with_one_line():
    sc = scenario()
    grid, rec = LocalGrid([11, 22]), MemoryRecorder()
    original = grid.push_messages

    def forgetful(messages):
        if any(m.content.config_records["fedsim.config"].get("round") == 3 for m in messages):
            grid.forget_state(22)
        return original(messages)

    grid.push_messages = forgetful
    with pytest.raises(
        EngineError, match=r"worker 22 failed in gossip superstep 3: .*lost its gossip nodes' state"
    ):
        Engine(sc, rec, expected_workers=2).run(grid)


def test_bad_gossip_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"gossip.topology.k"):
        check_before_run(scenario(topology={"kind": "regular", "args": {"k": 40}}))
    with pytest.raises(ConfigError, match=r"gossip.topology"):
        check_before_run(
            parse_scenario({**BASE, "gossip": {"topology": {"kind": "erdos_renyi", "args": {"p": 0.01}}}})
        )
    with pytest.raises(ConfigError, match=r"privacy"):
        check_before_run(parse_scenario({**BASE, "privacy": {"level": "client"}}))
    with pytest.raises(ConfigError, match=r"strategy.args.rule"):
        check_before_run(
            parse_scenario({**BASE, "strategy": {"name": "gossip", "args": {"rule": "plain"}}})
        )


def test_the_final_checkpoint_holds_every_node_model():
    sc = scenario()
    grid, rec = LocalGrid([1, 2]), MemoryRecorder()
    saved = {}
    rec.save_checkpoint = lambda **kw: saved.update(kw)
    Engine(sc, rec, expected_workers=2).run(grid)
    models = saved["strategy_state"]["node_models"]
    assert all(t.shape[0] == 12 for t in models.values())
    for k, v in saved["params"].items():  # the checkpoint's model is the average of the node models
        torch.testing.assert_close(v, models[k].mean(0))
    assert saved["round"] == sc.planned_rounds == 2



class SwitchingGrid(LocalGrid):
    """Each gossip message runs in a simulated worker process with its own live shards, as Ray's actors take any
    node's message: the k-th in process ``process(k)`` (None: a fresh one); the node's ``context.state`` travels
    pickled, as to and from a Ray actor."""

    def __init__(self, node_ids, process):
        super().__init__(node_ids)
        self.process, self.count, self.caches = process, 0, {}

    def deliver(self, msg):
        import pickle

        from fedsim.engine import worker

        if msg.metadata.message_type == "query.prepare":
            return super().deliver(msg)
        node, k = int(msg.metadata.dst_node_id), self.process(self.count)
        self.count += 1
        cache = {} if k is None else self.caches.setdefault(k, {})
        saved, worker._LIVE_SHARDS = worker._LIVE_SHARDS, cache
        self._contexts[node] = pickle.loads(pickle.dumps(self.context(node)))
        try:
            return super().deliver(msg)
        finally:
            worker._LIVE_SHARDS = saved


@pytest.mark.parametrize(
    ("process", "loads"),
    [(lambda k: 0, "none"), (lambda k: 1 if k % 5 in (1, 2) else 0, "some"), (lambda k: (k // 2) % 2, "all")],
    ids=["one-process", "sometimes-the-other", "swapped-every-superstep"],
)
def test_a_shard_kept_live_gives_the_run_of_one_loaded_from_the_context(process, loads, monkeypatch):
    """A worker process keeps its shard between messages and uses it only when the node's context holds the
    state that process saved last (else it loads the context's): any mix gives the run of shards always loaded
    from the context, bit for bit."""
    from fedsim.gossip.shard import GossipShard

    count = [0]
    load_state = GossipShard.load_state

    def counted(self, state):
        count[0] += 1
        return load_state(self, state)

    monkeypatch.setattr(GossipShard, "load_state", counted)
    sc = scenario(mode="push-pull", timeout=5)
    runs = []
    for grid in (SwitchingGrid([1, 2], lambda k: None), SwitchingGrid([1, 2], process)):
        rec, saved = MemoryRecorder(), {}
        rec.save_checkpoint = saved.update
        count[0] = 0
        Engine(sc, rec, expected_workers=2).run(grid)
        runs.append((rec.rows, saved["strategy_state"]["node_models"], count[0], grid.count))
    (fresh, fresh_models, fresh_loads, messages), (kept, kept_models, kept_loads, _) = runs
    timings = {"wall_time_s", "round_wall_s", "time_dispatch_s", "time_train_s", "time_aggregate_s", "time_eval_s"}
    assert [{k: v for k, v in r.items() if k not in timings} for r in fresh] == [
        {k: v for k, v in r.items() if k not in timings} for r in kept
    ]
    assert all(torch.equal(fresh_models[k], kept_models[k]) for k in fresh_models)
    assert fresh_loads == messages - 2  # every message but the first superstep's two (which build the shards)
    expected = {"none": kept_loads == 0, "some": 0 < kept_loads < fresh_loads, "all": kept_loads == fresh_loads}
    assert expected[loads]


class _Done:
    """A finished task of a fake actor (hashable, as Ray's futures are)."""

    def __init__(self, result):
        self.result = result


class _WorkerProcess:
    """A Ray actor's process: its own live shards; the context pickled to it and back, as Ray does."""

    def __init__(self):
        self.live, self.restart_next = {}, False

    def run(self, message, context):
        import pickle

        from fedsim.engine import worker

        if self.restart_next:  # its process died and Ray started it again: it runs the same task afresh
            self.live, self.restart_next = {}, False
        context = pickle.loads(pickle.dumps(context))
        saved, worker._LIVE_SHARDS = worker._LIVE_SHARDS, self.live
        try:
            reply = worker.client_app(message=message, context=context)
        finally:
            worker._LIVE_SHARDS = saved
        return _Done((reply, pickle.loads(pickle.dumps(context))))


class StickyPoolGrid(LocalGrid):
    """Gossip messages run as Flower's Ray backend runs them under ``simulation.sticky_actors``: Flower's
    ``BasicActorPool`` with fedsim's ``submit``, two worker processes, and fedsim's ``process_message`` around
    Flower's own steps (submit, take the result, the actor back to the pool). ``restart(k)``: the process that
    takes the k-th gossip message restarts before running it. ``sent_whole`` / ``sent_withheld``: the contexts
    that went to the processes with and without the shard."""

    def __init__(self, node_ids, restart=lambda k: False):
        from flwr.simulation.ray_transport.ray_actor import BasicActorPool

        from fedsim.engine.simulation import _process_message_sticky

        super().__init__(node_ids)
        self.pool = object.__new__(BasicActorPool)  # no Ray: its actors are the processes above
        self.pool.pool, self.pool._future_to_actor = [_WorkerProcess(), _WorkerProcess()], {}
        self.restart, self.count = restart, 0
        self.sent_whole = self.sent_withheld = 0
        self.process = _process_message_sticky(self.flower_process_message)

    def flower_process_message(self, backend, message, context):
        """What ``RayBackend.process_message`` does with the pool (fedsim's ``submit`` in place of Flower's)."""
        from fedsim.engine.messages import GOSSIP_STATE
        from fedsim.engine.simulation import _submit_sticky

        def on_actor(actor, app_fn, msg, cid, ctx):
            if GOSSIP_STATE in context.state.array_records:
                if GOSSIP_STATE in ctx.state.array_records:
                    self.sent_whole += 1
                else:
                    self.sent_withheld += 1
            actor.restart_next = self.restart(self.count)
            self.count += 1
            return actor.run(msg, ctx)

        future = _submit_sticky(self.pool, on_actor, (None, message, str(message.metadata.dst_node_id), context))
        self.pool.add_actor_back_to_pool(future)
        return future.result

    def deliver(self, msg):
        if msg.metadata.message_type == "query.prepare":
            return super().deliver(msg)
        node = int(msg.metadata.dst_node_id)
        reply, self._contexts[node] = self.process(None, msg, self.context(node))
        return reply


@pytest.mark.parametrize("restart", [lambda k: False, lambda k: k in (5, 9, 10)], ids=["kept", "restarted"])
def test_sticky_actors_give_the_run_of_contexts_always_sent_whole(restart):
    """Under ``sticky_actors`` a node's message goes to the process that ran its last one, without the shard that
    process keeps live; a process that restarted answers so and the message runs again with the whole context.
    Rows, node models and checkpointed shards are those of a run where every message carries the whole context."""
    sc = parse_scenario({**BASE, "gossip": {**BASE["gossip"], "mode": "push-pull", "timeout": 5},
                         "output": {"checkpoint_every": 1}})  # fmt: skip
    runs = []
    for grid in (LocalGrid([1, 2]), StickyPoolGrid([1, 2], restart)):
        rec, saved = MemoryRecorder(), []
        rec.save_checkpoint = lambda saved=saved, **kw: saved.append(kw)
        Engine(sc, rec, expected_workers=2).run(grid)
        runs.append((rec.rows, saved, grid))
    (want, want_saved, _), (got, got_saved, grid) = runs
    timings = {"wall_time_s", "round_wall_s", "time_dispatch_s", "time_train_s", "time_aggregate_s", "time_eval_s"}
    assert [{k: v for k, v in r.items() if k not in timings} for r in want] == [
        {k: v for k, v in r.items() if k not in timings} for r in got
    ]
    assert len(want_saved) == len(got_saved) >= 2
    for a, b in zip(want_saved, got_saved, strict=True):
        models_a, models_b = a["strategy_state"]["node_models"], b["strategy_state"]["node_models"]
        assert all(torch.equal(models_a[k], models_b[k]) for k in models_a)
        shards_a, shards_b = a["resume"]["loop"].get("shards", {}), b["resume"]["loop"].get("shards", {})
        assert shards_a.keys() == shards_b.keys()
        for i in shards_a:
            assert all(torch.equal(shards_a[i][k], shards_b[i][k]) for k in shards_a[i])
    assert grid.sent_withheld > 10
    # messages run one at a time here, so the pool's last free process runs both nodes' and keeps both shards live;
    # its restarts before the 5th and 9th messages lose both: each node's next message went withheld, was
    # answered so, and was sent again whole (the 10th, the 9th's second run, restarted with the whole context)
    assert grid.sent_whole == (4 if restart(5) else 0)


def client_drawn(**gossip):
    """BASE on blobs drawn per client (``draw: client``): 12 nodes of 10 examples."""
    data = {
        "dataset": "blobs",
        "args": {"shape": [6], "samples_per_client": 10, "test_samples": 60, "draw": "client"},
        "partitioner": "iid",
    }
    return parse_scenario({**BASE, "data": data, "gossip": {**BASE["gossip"], **gossip}})


def test_a_shard_of_client_drawn_data_holds_its_own_nodes_examples_only():
    sc = client_drawn(schedule="profile")  # the profile schedule reads every node's size
    data = build_data(sc)
    owned = [1, 5, 6]
    shard = build_shard(sc, data, build_initial_model(sc, data), owned)
    assert "_materialized" not in data.__dict__  # the population was never pooled
    assert len(shard.data.train_y) == sum(data.num_examples(c) for c in owned)
    for c in owned:
        x, y = shard.data.client_data(c)
        want_x, want_y = data.client_data(c)
        assert torch.equal(x, want_x) and torch.equal(y, want_y)


def test_gossip_on_client_drawn_data_runs_as_on_the_pooled_population():
    """Oracle: one process whose shard trains on the population pooled (what every worker built before)."""
    sc = client_drawn(mode="push-pull", schedule="profile")
    rows, _ = run_engine(sc)
    drawn = build_data(sc)
    pooled = FederatedData(
        train_x=drawn.train_x, train_y=drawn.train_y, test_x=drawn.test_x, test_y=drawn.test_y,
        partitions=drawn.partitions, num_classes=drawn.num_classes, input_shape=drawn.input_shape,
    )  # fmt: skip
    want = one_process(sc, pooled)
    assert_same_evaluations(rows, want)
    assert rows[-1]["trained"] > 0
