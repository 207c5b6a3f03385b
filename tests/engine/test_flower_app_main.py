"""``flwr run``'s ServerApp (``fedsim.flower_app.main``) end to end on the in-process grid: every family's run
log ends on its closing line and the row count ``fedsim deploy`` checks, whatever metrics its rows carry."""

from __future__ import annotations

import json

import pytest
from flwr.app import Context, RecordDict
from local_grid import LocalGrid

from fedsim.flower_app import DONE_PREFIX, METRICS_PREFIX, main
from fedsim.results import read_metrics

REGRESSION = {  # DP-GD without privacy: its rows have a test loss and no accuracy
    "name": "app-regression",
    "seed": 3,
    "rounds": 2,
    "data": {"dataset": "diabetes", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 4},
    "model": {"name": "mlp", "args": {"hidden": [6], "activation": "softplus"}},
    "strategy": {"name": "dp_gd", "clients_per_round": 4, "args": {"lr": 0.3, "clip": 1.0}},
}
GOSSIP = {  # gossip rows have no clients/dropped counts
    "name": "app-gossip",
    "seed": 3,
    "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
    "population": {"clients": 10},
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "client": {"batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "gossip"},
    "gossip": {
        "topology": {"kind": "regular", "args": {"k": 4}},
        "ticks": 20,
        "eval_every": 10,
        "timeout": 20,
    },
}


@pytest.mark.parametrize(
    ("scenario", "done", "rows"),
    [
        (REGRESSION, "fedsim: done: rounds=2 test_loss=", 2),
        (GOSSIP, "fedsim: done: ticks=20 evaluations=3 test_accuracy=", 3),  # ticks 0, 10, 20
    ],
)
def test_the_serverapp_log_ends_on_the_closing_line_and_the_row_count(tmp_path, capsys, scenario, done, rows):
    config = {"scenario-json": json.dumps(scenario), "output-dir": str(tmp_path)}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    main(LocalGrid([11, 22]), context)
    log = capsys.readouterr().out.splitlines()
    assert log[-2].startswith(done), log[-2]
    assert "non-finite" not in log[-2] and "WARNING" not in log[-2]
    assert log[-1] == DONE_PREFIX + json.dumps({"rows": rows})
    assert sum(line.startswith(METRICS_PREFIX) for line in log) == rows
    unit = "tick" if scenario is GOSSIP else "round"
    assert [line.split()[1] for line in log if line.startswith("fedsim: ") and " done: " not in line] == [
        unit
    ] * rows
    run_dir = next(tmp_path.glob(f"{scenario['name']}/*"))
    assert len(read_metrics(run_dir / "metrics.jsonl")) == rows
    assert log[-2].endswith(f"results={run_dir.resolve()}")
