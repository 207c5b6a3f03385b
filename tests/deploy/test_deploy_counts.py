"""``fedsim deploy`` judges a run finished by the ServerApp's own count of the rows it wrote, not by
``scenario.rounds``: FedFix may stop at ``horizon_s`` first, and gossip writes one row per evaluation. The ServerApp
is stood in for by a process that prints what it prints (``fedsim.flower_app``); the rest is the real code."""

from __future__ import annotations

import json
import sys

import pytest

from fedsim.deploy import submit
from fedsim.errors import DeployError
from fedsim.flower_app import DONE_PREFIX, METRICS_PREFIX
from fedsim.scenario import parse_scenario

FEDFIX = parse_scenario(
    {
        "name": "fedfix-horizon",
        "rounds": 50,
        "population": {"clients": 4},
        "strategy": {"name": "fedfix", "clients_per_round": 4, "args": {"window_s": 1.0, "horizon_s": 7.0}},
    }
)
GOSSIP = parse_scenario(
    {
        "name": "gossip-deploy",
        "population": {"clients": 12},
        "strategy": {"name": "gossip"},
        "gossip": {"topology": {"kind": "regular", "args": {"k": 4}}, "ticks": 60, "eval_every": 30},
    }
)


def serverapp_log(rows: list[dict], *, done: bool) -> list[str]:
    """What the ServerApp prints for ``rows``: a metrics line each, then (if it finished) its closing lines."""
    lines = [METRICS_PREFIX + json.dumps(r) for r in rows]
    if done:
        lines += ["fedsim: done: (closing line)", DONE_PREFIX + json.dumps({"rows": len(rows)})]
    else:
        lines += ["EngineError: worker 3 failed"]
    return lines


@pytest.fixture
def serverapp(monkeypatch):
    """Replace ``flwr run`` by a process that prints a given log, followed by the real ``follow_run``."""
    printed: list[str] = []

    def submit_and_follow(procs, *, app_dir, run_config, on_row, check=lambda run: None):
        code = f"print({chr(10).join(printed)!r})"
        procs.start("flwr-run", [sys.executable, "-c", code])
        return submit.follow_run(procs, "flwr-run", on_row=on_row, check=check, poll_s=0.05)

    monkeypatch.setattr(submit, "submit_and_follow", submit_and_follow)
    return printed


def deploy(scenario, tmp_path):
    return submit.deploy_remote(
        scenario,
        superlink="127.0.0.1:9093",
        ca_cert=None,
        insecure=True,
        output_root=tmp_path,
        show_progress=False,
    )


def fedfix_rows(n: int) -> list[dict]:
    return [
        {
            "round": r,
            "virtual_time_s": float(r),
            "clients": 4,
            "dropped": 0,
            "test_loss": 1.0,
            "test_accuracy": 0.5,
        }
        for r in range(1, n + 1)
    ]


def test_a_fedfix_run_that_stopped_at_its_horizon_is_finished(tmp_path, serverapp):
    serverapp += serverapp_log(fedfix_rows(7), done=True)  # step 7 reaches horizon_s = 7 s
    outcome = deploy(FEDFIX, tmp_path)
    assert outcome.summary_line().startswith("done: rounds=7 test_accuracy=0.5000")
    report = (outcome.path / "report.md").read_text()
    assert "| rounds | 7 of at most 50 (stopped at strategy.args.horizon_s = 7 s of virtual time) |" in report


def test_a_gossip_run_is_finished_with_its_evaluations(tmp_path, serverapp):
    rows = [{"round": e, "tick": 30 * e, "virtual_time_s": 30.0 * e, "trained": 9 * e, "test_accuracy": 0.3,
             "test_loss": 2.0} for e in (0, 1, 2)]  # fmt: skip
    serverapp += serverapp_log(rows, done=True)
    outcome = deploy(GOSSIP, tmp_path)
    assert outcome.summary_line().startswith("done: ticks=60 evaluations=3 ")


def test_a_run_cut_short_is_a_one_line_error_with_the_planned_count(tmp_path, serverapp):
    serverapp += serverapp_log(fedfix_rows(3), done=False)
    with pytest.raises(
        DeployError, match=r"the run stopped after 3 of at most 50 rounds: EngineError: worker 3"
    ):
        deploy(FEDFIX, tmp_path)


def test_a_local_copy_that_missed_rows_is_not_finished(tmp_path, serverapp):
    log = serverapp_log(fedfix_rows(7), done=True)
    serverapp += [line for i, line in enumerate(log) if i != 4]  # one metrics line lost on the way
    with pytest.raises(DeployError, match=r"the run stopped after 6 of at most 50 rounds"):
        deploy(FEDFIX, tmp_path)
