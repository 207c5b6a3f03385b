"""The engine's deployment path through an in-process Grid (no Ray, no processes).

Each node owns one logical client (its ``partition-id``); replies are taken as they arrive, so a round plan
with a quorum keeps the first K of N; a node that goes away only drops its client.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import pytest
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from local_grid import LocalGrid, MemoryRecorder

from fedsim.engine import driver
from fedsim.engine.placement import NodeIdentity, partition_owners
from fedsim.engine.server import Engine
from fedsim.engine.transport import iter_replies
from fedsim.errors import EngineError
from fedsim.scenario import parse_scenario
from strategies import build_strategy

POPULATION = 4
SMALL = {
    "name": "deploy-small",
    "seed": 2,
    "rounds": 2,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": POPULATION},
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "client": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedavg", "clients_per_round": POPULATION},
    "engine": {"round_timeout_s": 20},
}


def devices(partitions, *, population=POPULATION):
    """Node id 100+k owns partition k (node ids unrelated to client ids, as in a real deployment)."""
    return {100 + p: {"partition-id": p, "num-partitions": population} for p in partitions}


class RecordingGrid(LocalGrid):
    """Records the client ids of every train message and can hold some nodes' replies back: for ``delay_s``
    seconds, or (``held_for``) until that many more train messages have been pushed after them, which does not
    depend on how fast the machine trains."""

    def __init__(self, node_configs, *, slow=(), delay_s=0.0, held_for=0, unavailable=lambda rnd, node: False):
        super().__init__(list(node_configs), node_configs=node_configs)
        self.slow, self.delay_s, self.held_for, self.unavailable = set(slow), delay_s, held_for, unavailable
        self.clients_sent: list[tuple[int, int, list[int]]] = []  # (round, node, client ids)
        self.ready_at: dict[str, float] = {}
        self.ready_after: dict[str, int] = {}  # message id -> train messages pushed before its reply shows

    def push_messages(self, messages):
        messages = list(messages)
        ids = super().push_messages(messages)
        now = time.monotonic()
        for msg_id, msg in zip(ids, messages, strict=True):
            node = msg.metadata.dst_node_id
            cfg = msg.content.config_records.get("fedsim.config")
            if cfg is not None and "client_ids" in cfg:  # slow devices train slowly; they get ready at once
                self.ready_at[msg_id] = now + (self.delay_s if node in self.slow else 0.0)
                if node in self.slow and self.held_for:
                    self.ready_after[msg_id] = len(self.clients_sent) + 1 + self.held_for
                rnd = int(cfg["round"])
                self.clients_sent.append((rnd, node, [int(c) for c in cfg["client_ids"]]))
                if self.unavailable(rnd, node):  # what the SuperLink answers for a node that went away
                    reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="gone"), reply_to=msg)
                    reply.metadata.__dict__["_src_node_id"] = 0
                    self._replies[msg_id] = reply
        return ids

    def pull_messages(self, message_ids):
        now = time.monotonic()
        pushed = len(self.clients_sent)
        ready = [i for i in message_ids if self.ready_at.get(i, 0.0) <= now and self.ready_after.get(i, 0) <= pushed]
        return super().pull_messages(ready)


def run(grid, overrides=None, **kw):
    sc = parse_scenario({**SMALL, **(overrides or {})})
    rec = MemoryRecorder()
    Engine(sc, rec, expected_workers=len(grid.node_ids), **kw).run(grid)
    return rec


def test_each_client_goes_to_the_node_that_owns_its_partition():
    # 3 devices for a population of 6: partitions 3..5 have no device and are never selected.
    grid = RecordingGrid(devices([0, 1, 2], population=6))
    rec = run(
        grid,
        {"population": {"clients": 6}, "strategy": {"name": "fedavg", "clients_per_round": 3}},
        placement="auto",  # every node names a partition of this population: one client per node
    )
    owner = {cfg["partition-id"]: node for node, cfg in grid.node_configs.items()}
    assert grid.clients_sent, "no train message was sent"
    for _, node, cids in grid.clients_sent:
        assert cids == [grid.node_configs[node]["partition-id"]]  # one client per device, its own
        assert owner[cids[0]] == node
    assert all(r["selected"] == 3 and r["clients"] == 3 for r in rec.rows)


def test_placement_does_not_change_the_result():
    """Oracle: the same scenario sharded over 1 simulation worker (the path the simulation tests cover)."""
    deployed = run(RecordingGrid(devices(range(POPULATION))), placement="partition")
    simulated = run(LocalGrid([7]), placement="shard")
    for d, s in zip(deployed.rows, simulated.rows, strict=True):
        assert d["test_accuracy"] == pytest.approx(s["test_accuracy"], abs=1e-6)
        assert d["test_loss"] == pytest.approx(s["test_loss"], abs=1e-5)
    assert deployed.rows[-1]["test_accuracy"] > deployed.rows[0]["test_accuracy"] - 0.05


@dataclasses.dataclass(frozen=True)
class FirstK:
    """FedAvg that over-selects: the round closes after the first ``k`` results (a test strategy)."""

    family: ClassVar[str] = "sync"
    inner: object
    k: int | None

    def init(self, params):
        return self.inner.init(params)

    def configure_round(self, state, *, round, available, rng):
        plan = self.inner.configure_round(state, round=round, available=available, rng=rng)
        return dataclasses.replace(plan, quorum=self.k)

    def aggregate(self, state, params, updates):
        return self.inner.aggregate(state, params, updates)


@dataclasses.dataclass(frozen=True)
class Only:
    """FedAvg restricted to fixed clients (the oracle of the quorum test)."""

    family: ClassVar[str] = "sync"
    inner: object
    clients: tuple[int, ...]

    def init(self, params):
        return self.inner.init(params)

    def configure_round(self, state, *, round, available, rng):
        return dataclasses.replace(
            self.inner.configure_round(state, round=round, available=available, rng=rng),
            client_ids=self.clients,
        )

    def aggregate(self, state, params, updates):
        return self.inner.aggregate(state, params, updates)


def test_a_quorum_aggregates_the_first_k_replies_without_waiting_for_the_rest(monkeypatch):
    delay = 20.0  # far above the training time in push_messages, even on a busy machine
    slow = [102, 103]  # the devices of clients 2 and 3 answer after `delay`
    monkeypatch.setattr(driver, "build_strategy", lambda cfg, *args: FirstK(build_strategy(cfg, *args), k=2))
    grid = RecordingGrid(devices(range(POPULATION)), slow=slow, delay_s=delay)
    first_k = run(grid, placement="partition")
    for row in first_k.rows:
        assert row["selected"] == 4 and row["clients"] == 2 and row["dropped_late"] == 2
        assert row["dropped"] == 2 and row["dropped_timeout"] == 0
        assert row["time_round_trip_s"] < delay / 2  # it did not wait for the slow devices
    # Oracle: FedAvg over exactly the two fast clients, chosen up front.
    monkeypatch.setattr(driver, "build_strategy", lambda cfg, *args: Only(build_strategy(cfg, *args), clients=(0, 1)))
    only_fast = run(RecordingGrid(devices(range(POPULATION))), placement="partition")
    for a, b in zip(first_k.rows, only_fast.rows, strict=True):
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-6)


def test_without_a_quorum_the_round_waits_for_every_reply():
    grid = RecordingGrid(devices(range(POPULATION)), slow=[103], delay_s=0.5)
    rec = run(grid, {"rounds": 1}, placement="partition")
    assert rec.rows[0]["clients"] == 4 and rec.rows[0]["time_round_trip_s"] >= 0.5


def test_a_device_that_went_away_is_dropped_and_the_run_goes_on():
    grid = RecordingGrid(devices(range(POPULATION)), unavailable=lambda rnd, node: rnd == 1 and node == 101)
    rec = run(grid, placement="partition")
    assert rec.rows[0]["dropped_unavailable"] == 1 and rec.rows[0]["clients"] == 3
    assert rec.rows[0]["dropped"] == 1
    assert rec.rows[1]["dropped_unavailable"] == 0 and rec.rows[1]["clients"] == 4


def test_only_connected_devices_are_selected():
    grid = RecordingGrid(devices(range(POPULATION)))
    original = grid.get_node_ids

    def shrinking():  # device 103 disconnects once round 1 has been sent
        nodes = original()
        return [n for n in nodes if n != 103] if grid.clients_sent else nodes

    grid.get_node_ids = shrinking
    run(grid, placement="partition")
    sent_round_2 = sorted(c for rnd, _, cids in grid.clients_sent if rnd == 2 for c in cids)
    assert 3 not in sent_round_2 and sent_round_2 == [0, 1, 2]


def test_node_configs_that_do_not_fit_the_population_are_refused():
    ident = lambda p, n=POPULATION: NodeIdentity(partition_id=p, num_partitions=n)  # noqa: E731
    with pytest.raises(EngineError, match="both have partition-id=1"):
        partition_owners({1: ident(1), 2: ident(1)}, population=POPULATION, mode="partition")
    with pytest.raises(EngineError, match="num-partitions=4"):
        partition_owners({1: ident(0, 10)}, population=POPULATION, mode="partition")
    with pytest.raises(EngineError, match=r"partition-id must be in \[0, 4\)"):
        partition_owners({1: ident(7)}, population=POPULATION, mode="partition")
    with pytest.raises(EngineError, match="placement must be one of"):
        partition_owners({}, population=POPULATION, mode="devices")
    # auto: Flower's simulation gives its nodes partitions of a different count -> shard, as before
    assert partition_owners({1: ident(0, 2), 2: ident(1, 2)}, population=POPULATION, mode="auto") is None
    assert (
        partition_owners({1: NodeIdentity(), 2: NodeIdentity()}, population=POPULATION, mode="auto") is None
    )
    assert partition_owners({5: ident(1), 6: ident(0)}, population=POPULATION, mode="auto") == {0: 6, 1: 5}


def test_replies_are_yielded_as_they_arrive_and_stopping_early_pulls_no_more():
    class Grid:
        def __init__(self):
            self.pulls, self.t0 = 0, time.monotonic()

        def pull_messages(self, ids):
            self.pulls += 1
            ready = [i for i in ids if time.monotonic() - self.t0 >= float(i)]
            return [dataclasses.make_dataclass("R", ["metadata"])(_Meta(i)) for i in ready]

    grid = Grid()
    it = iter_replies(grid, ["0.0", "0.05", "5.0"], timeout_s=10, poll_s=0.001, max_poll_s=0.01)
    got = [next(it).metadata.reply_to_message_id for _ in range(2)]
    pulls = grid.pulls
    it.close()
    assert got == ["0.0", "0.05"] and time.monotonic() - grid.t0 < 1.0
    assert grid.pulls == pulls
    # without stopping, the deadline bounds the wait and the slow one is missing
    grid = Grid()
    replies = list(iter_replies(grid, ["0.0", "5.0"], timeout_s=0.3, poll_s=0.001, max_poll_s=0.05))
    assert [r.metadata.reply_to_message_id for r in replies] == ["0.0"]
    assert grid.pulls < 0.3 / 0.001 / 2  # the pause grew instead of spinning every millisecond


@dataclasses.dataclass
class _Meta:
    reply_to_message_id: str


def test_a_wrong_placement_name_fails_before_round_1():
    with pytest.raises(EngineError, match="placement must be one of"):
        run(RecordingGrid(devices(range(POPULATION))), placement="devices")


def test_fedbuff_on_devices_steps_in_the_order_replies_really_arrive():
    """Real devices: a FedBuff step takes the first c replies that arrive; slow devices join later steps."""
    grid = RecordingGrid(devices(range(4), population=4), slow={100, 101}, held_for=4)
    rec = run(
        grid,
        {
            "rounds": 12,
            "population": {"clients": 4},
            "strategy": {"name": "fedbuff", "clients_per_round": 4, "args": {"buffer": 2}},
        },
        placement="partition",
    )
    rows = rec.rows
    assert all(r["clients"] == 2 for r in rows)
    # the fast devices (partitions 2, 3) answer at once, so they fill the first buffers; the slow ones answer
    # after four more train messages have gone out, from version 0: stale by the time they are used
    first_step = [cids for rnd, node, cids in grid.clients_sent if rnd == 1]
    assert sorted(c for cids in first_step for c in cids) == [2, 3]  # restarted after step 1
    assert rows[0]["staleness"] == [0, 0]
    assert max(r["staleness_max"] for r in rows) >= 1
    times = [r["virtual_time_s"] for r in rows]
    assert times == sorted(times)
    assert rows[-1]["test_accuracy"] > 0.1


def test_replies_pulled_together_each_make_a_fedbuff_step_and_none_is_lost():
    """Two devices answer at once: one pull brings both replies; with c = 1 the second waits for the next step.

    (A pull hands a reply over once: a loop that stopped reading after the first would never see the second
    client again, and the next step would wait out its deadline with nothing.)
    """
    grid = RecordingGrid(devices(range(2), population=2))
    rec = run(
        grid,
        {
            "rounds": 6,
            "population": {"clients": 2},
            "strategy": {"name": "fedbuff", "clients_per_round": 2, "args": {"buffer": 1}},
            "engine": {"round_timeout_s": 20},  # generous: a loaded machine trains slowly; a lost reply waits it out
        },
        placement="partition",
    )
    assert [(r["clients"], r["dropped"]) for r in rec.rows] == [(1, 0)] * 6, rec.rows  # no step came up empty
    # both devices keep training: each reply restarts its own client from the new model
    started = sorted(c for _, _, cids in grid.clients_sent for c in cids)
    assert started.count(0) >= 3 and started.count(1) >= 3
