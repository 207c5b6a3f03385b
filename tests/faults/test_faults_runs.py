"""Whole small runs on the in-process backend: the loops count the injected faults in their rows without knowing
about them (a FedAvg round's ``dropped_failure`` and ``dropped_nonfinite``, a gossip row's ``dropped_nonfinite``)."""

from __future__ import annotations

from typing import Any

from fedsim.engine.simulation import simulate_inprocess
from fedsim.scenario import parse_scenario


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write_round(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))

    def save_checkpoint(self, **_: Any) -> None:
        pass


BASE: dict[str, Any] = {
    "name": "faulty",
    "seed": 1,
    "rounds": 3,
    "data": {"dataset": "digits", "partitioner": "iid"},
    "population": {"clients": 20},
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "client": {"batch_size": 16},
    "engine": {"backend": "inprocess", "workers": 2},
    "faults": {"crash": 0.2, "nonfinite": 0.3},
}


def run(raw: dict[str, Any]) -> list[dict[str, Any]]:
    rows = Rows()
    simulate_inprocess(parse_scenario(raw), rows)  # type: ignore[arg-type]
    return rows.rows


def test_a_fedavg_run_counts_crashes_and_nonfinite_updates():
    rows = run({**BASE, "strategy": {"name": "fedavg", "clients_per_round": 10}})
    for r in rows:
        kept_or_dropped = r["clients"] + r["dropped_failure"] + r["dropped_nonfinite"] + r["dropped_offline"]
        assert kept_or_dropped == r["selected"] == 10
    assert sum(r["dropped_failure"] for r in rows) > 0 and sum(r["dropped_nonfinite"] for r in rows) > 0


def test_a_gossip_run_counts_nodes_with_nonfinite_updates():
    rows = run(
        {
            **BASE,
            "strategy": {"name": "gossip", "clients_per_round": 20},
            "gossip": {"ticks": 40, "eval_every": 20, "topology": {"kind": "ring"}},
        }
    )
    assert [r["tick"] for r in rows] == [0, 20, 40]
    assert rows[-1]["dropped_nonfinite"] > 0 and rows[-1]["failed"] > 0
    totals = [r["dropped_nonfinite"] for r in rows]  # counted from tick 0
    assert totals == sorted(totals)
