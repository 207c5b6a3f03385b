"""``report.md``, its plot and the closing line of ``fedsim run``, rendered from hand-written metrics rows: they
say what the rows support (warnings for rounds that aggregated nothing), count each family one way, and show the
settings that apply to it."""

from __future__ import annotations

from pathlib import Path

import matplotlib.figure
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.engine.rounds import RunSummary
from fedsim.report import write_report
from fedsim.run import RunOutcome
from fedsim.scenario import parse_scenario
from fedsim.tally import warnings

SYNC = parse_scenario({"name": "sync", "rounds": 3, "strategy": {"name": "fedavg", "clients_per_round": 6}})
REGRESSION = parse_scenario(
    {
        "name": "reg",
        "rounds": 4,
        "data": {"dataset": "diabetes", "partitioner": "iid", "partitioner_args": {}},
        "population": {"clients": 4},
        "strategy": {"name": "dp_gd", "clients_per_round": 4, "args": {"lr": 0.5, "clip": 1.0}},
    }
)
GOSSIP = parse_scenario(
    {
        "name": "gsp",
        "population": {"clients": 12},
        "strategy": {"name": "gossip"},
        "gossip": {
            "topology": {"kind": "regular", "args": {"k": 4}},
            "rule": "plain",
            "beta": 0.25,
            "mode": "push-pull",
            "unit": "epoch",
            "ticks": 60,
            "eval_every": 30,
        },
    }
)


def sync_row(rnd: int, clients: int, *, nonfinite: int = 0, selected: int = 6, acc: float = 0.5) -> dict:
    return {
        "round": rnd,
        "virtual_time_s": float(rnd),
        "selected": selected,
        "clients": clients,
        "dropped": selected - clients,
        "dropped_failure": selected - clients - nonfinite,
        "dropped_nonfinite": nonfinite,
        "train_loss": None if clients == 0 else 1.0,
        "test_loss": 2.0,
        "test_accuracy": acc,
        "wall_time_s": 0.1 * rnd,
    }


def render(tmp_path: Path, scenario, rows) -> tuple[str, str]:
    """(the closing line, report.md) of a run that wrote ``rows``."""
    write_report(tmp_path, scenario, rows, wall_s=1.5)
    outcome = RunOutcome(
        path=tmp_path, summary=RunSummary(rounds=len(rows)), wall_s=1.5, scenario=scenario, rows=rows
    )
    return outcome.summary_line(), (tmp_path / "report.md").read_text()


@pytest.fixture
def figures(monkeypatch):
    """The figures the report saves, kept for inspection."""
    saved = []
    original = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return saved


def test_a_run_whose_every_update_was_non_finite_says_so(tmp_path):
    rows = [sync_row(r, 0, nonfinite=6, acc=0.1) for r in (1, 2, 3)]
    line, report = render(tmp_path, SYNC, rows)
    warning = "all 3 rounds aggregated no update (18 dropped as non-finite)"
    assert line.startswith(f"done: rounds=3 WARNING: {warning};")
    assert line.endswith(f"results={tmp_path}")
    assert report.splitlines()[2] == f"**WARNING: {warning}.**"  # under the title, above the table
    assert "| client updates aggregated / dropped | 0 / 18 (18 non-finite) |" in report


def test_rounds_without_clients_among_sound_ones_are_counted(tmp_path):
    rows = [sync_row(r, 6) for r in range(1, 51)]
    for r in range(10, 22):  # 12 rounds in which no client was online
        rows[r - 1] = sync_row(r, 0, selected=0)
    rows[30] = sync_row(31, 4, nonfinite=2)
    line, report = render(tmp_path, SYNC.model_copy(update={"rounds": 50}), rows)
    assert (
        "WARNING: 12 of 50 rounds had no clients (no client was selected); 2 client updates dropped as "
        in line
    )
    assert "**WARNING: 12 of 50 rounds had no clients (no client was selected).**" in report
    assert "| rounds | 50 of 50 |" in report


def test_a_sound_run_has_no_warning(tmp_path):
    line, report = render(tmp_path, SYNC, [sync_row(r, 5 + r % 2) for r in (1, 2, 3)])
    assert "WARNING" not in line and "WARNING" not in report
    assert line.startswith("done: rounds=3 test_accuracy=0.5000 test_loss=2.0000 wall_s=1.5 results=")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=30))
def test_the_warning_counts_the_empty_rounds_and_the_non_finite_drops(kept_and_nonfinite):
    rows = [
        sync_row(i + 1, kept, nonfinite=min(nf, 6 - kept)) for i, (kept, nf) in enumerate(kept_and_nonfinite)
    ]
    empty = sum(1 for kept, _ in kept_and_nonfinite if kept == 0)
    nonfinite_elsewhere = sum(r["dropped_nonfinite"] for r in rows if r["clients"] > 0)
    said = " ".join(warnings(SYNC, rows))
    if empty == len(rows):
        assert said.startswith(f"all {len(rows)} rounds aggregated no update")
    elif empty:
        assert said.startswith(f"{empty} of {len(rows)} rounds had no clients")
    assert ("rounds aggregated no update" in said or "rounds had no clients" in said) == (empty > 0)
    assert (f"{nonfinite_elsewhere} client updates dropped as non-finite" in said) == (
        nonfinite_elsewhere > 0
    )


def gossip_rows(ticks=(0, 30, 60)) -> list[dict]:
    return [
        {
            "round": -(-t // 30),
            "tick": t,
            "virtual_time_s": float(t),
            "trained": 2 * t,
            "failed": 1 if t else 0,
            "train_loss": None if t == 0 else 1.0,
            "test_accuracy_mean": 0.1 + t / 100,
            "test_accuracy_avg_model": 0.2 + t / 100,
            "test_accuracy": 0.1 + t / 100,
            "test_loss": 2.0 - t / 100,
            "supersteps": t,
        }
        for t in ticks
    ]


def test_a_gossip_report_shows_what_applies_to_gossip_counted_in_ticks_and_evaluations(tmp_path, figures):
    line, report = render(tmp_path, GOSSIP, gossip_rows())
    assert line.startswith("done: ticks=60 evaluations=3 test_accuracy=0.7000 test_loss=1.4000 ")
    assert "| ticks | 60 of 60 |" in report
    assert "| evaluations (tick 0, every 30 ticks, the last tick) | 3 of 3 |" in report
    assert "| final test accuracy of the nodes' average model | 0.8000 |" in report
    assert "| node trainings / failed | 120 / 1 |" in report
    settings_text = report.split("## Settings")[1].split("##")[0]
    for shown in (
        "12 nodes",
        "topology `regular` {'k': 4}",
        "rule `plain`",
        "beta 0.25",
        "mode `push-pull`",
        "unit `epoch`",
        "schedule `uniform`",
        "60 ticks",
        "evaluation every 30 ticks",
    ):
        assert shown in settings_text, shown
    for absent in ("clients/round", "server optimizer", "epoch(s)", "rounds"):
        assert absent not in report, absent
    (fig,) = figures
    for ax in fig.axes:
        assert ax.get_xlabel() == "tick"
        assert all(float(t).is_integer() for t in ax.get_xticks())


def test_an_interrupted_gossip_run_counts_the_evaluations_it_made(tmp_path):
    line, report = render(tmp_path, GOSSIP, gossip_rows(ticks=(0, 30)))
    assert line.startswith("done: ticks=30 evaluations=2 ")
    assert "| ticks | 30 of 60 |" in report and "| 2 of 3 |" in report


def test_a_regression_report_shows_its_squared_loss_and_no_accuracy(tmp_path, figures):
    rows = [
        {"round": r, "virtual_time_s": float(r), "selected": 4, "clients": 4, "dropped": 0, "train_loss": 1.0 / r,
         "test_loss": 1.2 / r}
        for r in (1, 2, 3, 4)
    ]  # fmt: skip
    line, report = render(tmp_path, REGRESSION, rows)
    assert line.startswith("done: rounds=4 test_loss=0.3000 wall_s=1.5 ")
    assert "| final test loss (mean squared error) | 0.3000 |" in report
    assert "accuracy" not in report.lower()
    assert "strategy: `dp_gd` {'lr': 0.5, 'clip': 1.0}, every client in every round" in report
    assert "epoch(s)" not in report and "server optimizer" not in report
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_ylabel() == "mean squared error"
    test_line = next(line for line in ax.get_lines() if line.get_label() == "test")
    assert list(test_line.get_ydata()) == pytest.approx([1.2, 0.6, 0.4, 0.3])


def test_a_non_finite_final_loss_is_said_not_hidden(tmp_path):
    rows = [sync_row(1, 6), {**sync_row(2, 6), "test_loss": None}]  # metrics.jsonl stores NaN as null
    line, report = render(tmp_path, SYNC.model_copy(update={"rounds": 2}), rows)
    assert "test_loss=non-finite" in line
    assert "| final test loss (cross-entropy) | non-finite |" in report


def test_the_report_lists_only_the_files_the_run_wrote(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    _, report = render(tmp_path, SYNC, [sync_row(1, 6)])
    files = report.split("Files: ")[1]
    assert "`metrics.jsonl`" in files and "`plots`" in files
    assert "`model.pt`" not in files  # a FedFix run stopped at horizon_s writes none (see the report)


def test_the_progress_lines_count_rounds_or_gossip_ticks():
    import io

    from rich.console import Console

    from fedsim.run import ProgressDisplay

    out = io.StringIO()
    with ProgressDisplay(Console(file=out, force_terminal=False, width=200), GOSSIP) as display:
        for row in gossip_rows():
            display({**row, "wall_time_s": 1.0})
    assert [line.split(" acc=")[0] for line in out.getvalue().splitlines()] == [
        "starting workers for 60 ticks ...",
        "tick 0/60",
        "tick 30/60",
        "tick 60/60",
    ]
    out = io.StringIO()
    with ProgressDisplay(Console(file=out, force_terminal=False, width=200), REGRESSION) as display:
        display({"round": 4, "clients": 4, "dropped": 0, "test_loss": 0.25, "wall_time_s": 2.0})
    assert out.getvalue().splitlines()[-1] == "round 4/4 test_loss=0.25 clients=4 dropped=0 wall=2.0s"


def test_a_run_that_stops_before_its_planned_rounds_still_writes_its_model(tmp_path):
    """FedFix stops at ``horizon_s`` (here after 7 of at most 50 steps): the final checkpoint is the result."""
    import torch

    from fedsim.results import read_metrics
    from fedsim.run import run_scenario

    scenario = parse_scenario(
        {
            "name": "fedfix-horizon",
            "rounds": 50,
            "data": {"dataset": "digits", "partitioner": "iid"},
            "population": {"clients": 4},
            "model": {"name": "mlp", "args": {"hidden": [8]}},
            "strategy": {"name": "fedfix", "clients_per_round": 4, "args": {"window_s": 1.0, "horizon_s": 7.0}},
            "engine": {"backend": "inprocess"},
        }
    )
    outcome = run_scenario(scenario, output_root=tmp_path, show_progress=False)
    rows = read_metrics(outcome.path / "metrics.jsonl")
    assert 0 < len(rows) < 50
    model = torch.load(outcome.path / "model.pt")
    last = torch.load(outcome.path / "checkpoints" / f"round-{rows[-1]['round']}.pt", weights_only=False)
    assert model.keys() == last["params"].keys()
    assert all(torch.equal(model[k], last["params"][k]) for k in model)


def test_a_dp_report_keeps_wall_time_back_and_says_checkpoints_hold_the_noise_stream(tmp_path):
    """Wall time depends on who trained: a DP run that withholds diagnostics shows none; its checkpoints carry the
    noise generator's state, so the report says not to share them (and releasing diagnostics shows wall time)."""
    dp = {"level": "client", "noise_multiplier": 1.0, "accountants": ["rdp"], "insecure_seed": True}
    for released in (False, True):
        sc = SYNC.model_copy(
            update={"privacy": parse_scenario({"name": "x", "privacy": {**dp, "release_diagnostics": released}}).privacy}
        )
        run_dir = tmp_path / str(released)
        (run_dir / "checkpoints").mkdir(parents=True)
        _, report = render(run_dir, sc, [sync_row(1, 6)])
        assert ("wall time" in report) is released
        files = report.split("Files: ")[1]
        assert "share a DP results folder without `checkpoints/`" in files
    (tmp_path / "plain" / "checkpoints").mkdir(parents=True)
    _, report = render(tmp_path / "plain", SYNC, [sync_row(1, 6)])
    assert "wall time" in report and "without `checkpoints/`" not in report
