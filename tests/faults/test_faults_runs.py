"""Whole small runs on the in-process backend: the loops count the injected faults in their rows without knowing
about them (a FedAvg round's ``dropped_failure`` and ``dropped_nonfinite``, a gossip row's ``dropped_nonfinite``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

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


class Final(Rows):
    def save_checkpoint(self, **kw: Any) -> None:
        if kw.get("final"):
            self.params = kw["params"]


FAMILIES: dict[str, dict[str, Any]] = {
    "sync": {"strategy": {"name": "fedavg", "clients_per_round": 10}},
    "event-fedbuff": {
        "rounds": 6,
        "strategy": {"name": "fedbuff", "clients_per_round": 6, "args": {"buffer": 3}},
    },
    "event-fedfix": {
        "rounds": 6,
        "strategy": {"name": "fedfix", "clients_per_round": 6, "args": {"window_s": 0.5}},
    },
    "gossip": {
        "strategy": {"name": "gossip"},
        "gossip": {"ticks": 30, "eval_every": 10, "topology": {"kind": "ring"}},
    },
    "diff2": {
        "data": {"dataset": "diabetes", "partitioner": "iid"},
        "population": {"clients": 6},
        "model": {"name": "mlp", "args": {"hidden": [6], "activation": "softplus"}},
        "strategy": {"name": "dp_gd", "clients_per_round": 6, "args": {"lr": 0.3, "clip": 0.8}},
        "faults": {
            "nonfinite": 0.3
        },  # DIFF2 needs every client: crashes are refused, non-finite ones dropped
    },
}


def test_the_fault_cases_cover_every_family():
    from fedsim.engine.loop import FAMILIES as LOOPS
    from fedsim.engine.loop import family_of
    from strategies import build_strategy

    families = set()
    for over in FAMILIES.values():
        sc = parse_scenario({**BASE, **over})
        families.add(family_of(build_strategy(sc.strategy, sc.population.clients)))
    assert families == set(LOOPS)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_drops_and_counts_nonfinite_updates_and_keeps_a_finite_model(family):
    rec = Final()
    simulate_inprocess(parse_scenario({**BASE, **FAMILIES[family]}), rec)  # type: ignore[arg-type]
    counted = (
        rec.rows[-1]["dropped_nonfinite"]
        if family == "gossip"
        else sum(r["dropped_nonfinite"] for r in rec.rows)
    )
    assert counted > 0
    assert all(bool(torch.isfinite(v).all()) for v in rec.params.values() if v.is_floating_point())
    assert all(r.get("test_loss") is None or math.isfinite(r["test_loss"]) for r in rec.rows)


def test_stragglers_stretch_a_synchronous_round_by_their_slowdown():
    """With every client a straggler, each round's virtual duration is exactly ``slowdown`` times longer."""
    sync = {**BASE, **FAMILIES["sync"], "faults": {}}
    plain, slow = Rows(), Rows()
    simulate_inprocess(parse_scenario(sync), plain)  # type: ignore[arg-type]
    simulate_inprocess(
        parse_scenario({**sync, "faults": {"stragglers": {"fraction": 1.0, "slowdown": 3.0}}}), slow
    )  # type: ignore[arg-type]
    for a, b in zip(plain.rows, slow.rows, strict=True):
        assert b["round_virtual_s"] == pytest.approx(3.0 * a["round_virtual_s"], rel=1e-9)
        assert b["train_loss"] == a["train_loss"]  # who trained what is unchanged: only the clock moves
