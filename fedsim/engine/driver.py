"""The run driver: everything around a strategy family's steps, the same for every family.

It waits for the workers (with a deadline, and abandons the wait on Ctrl-C/SIGTERM), has them prepare while it
builds the central data and model, places the logical clients, samples the device profiles, resolves a DP run's
plan and spend (the privacy ledger), builds the family's :class:`~fedsim.engine.loop.Loop` by the name the
strategy declares, and then runs steps: it adds the evaluation when it is due, the step's timings and the wall
clock to each row, writes the row (through the DP release rule), shows progress, writes checkpoints at the
scenario's cadence and when asked to stop, and the final checkpoint at the end. Resuming is the same run from
a checkpoint's state: the rows already written are kept, the loop is restored, and the next step is the one
the checkpoint was taken before.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fedsim import __version__
from fedsim.engine.loop import RunContext, StepResult, check_privacy, cpu_state, family_of, loop_factory
from fedsim.engine.placement import partition_owners
from fedsim.engine.rounds import RunSummary
from fedsim.engine.setup import build_data, build_initial_model, evaluation_data
from fedsim.engine.transport import wait_for_workers
from fedsim.scenario.devices import DeviceProfiles
from fedsim.stopping import RunStopped
from strategies import build_strategy

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from fedsim.engine.loop import Loop
    from fedsim.engine.server import Engine

CHECKPOINT_FORMAT = 1
"""The layout of a checkpoint's ``resume`` part; a checkpoint of another format is refused on resume."""


class Driver:
    """Runs one scenario on ``grid`` for ``engine`` (its scenario, recorder, progress and transport settings)."""

    def __init__(self, engine: Engine, grid: Grid) -> None:
        self.engine, self.grid = engine, grid
        self.rows: list[dict[str, Any]] = []
        self.wall_before = 0.0  # wall seconds of the run before the checkpoint it resumed from
        self.last_checkpoint_at = time.monotonic()

    def prepare(self) -> RunContext:
        """Workers registered and prepared, central data and model built, clients placed, the DP plan resolved."""
        engine, sc = self.engine, self.engine.scenario
        nodes = wait_for_workers(
            self.grid,
            expected=engine.expected_workers,
            timeout_s=sc.engine.register_timeout_s,
            stop=engine.stop,
        )
        pending = engine.ask_to_prepare(self.grid, nodes)  # workers build while the server builds its own
        data = evaluation_data(build_data(sc), sc)
        model = build_initial_model(sc, data)
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        n = sc.population.clients
        if sc.privacy is not None and engine.privacy is None:  # imported here: accountants take seconds
            from fedsim.dp_plan import scenario_plan_and_spend

            engine.privacy = scenario_plan_and_spend(sc, [data.num_examples(c) for c in range(n)])
        identities = engine.await_prepared(self.grid, pending)
        return RunContext(
            scenario=sc,
            engine=engine,
            grid=self.grid,
            nodes=nodes,
            identities=identities,
            owners=partition_owners(identities, population=n, mode=engine.placement),
            data=data,
            model=model,
            params=params,
            profiles=DeviceProfiles.from_scenario(sc),
            privacy=engine.privacy,
        )

    def run(self) -> RunSummary:
        engine, sc = self.engine, self.engine.scenario
        strategy = build_strategy(sc.strategy, sc.population.clients)
        family = family_of(strategy)
        check_privacy(sc, family)  # before any worker is waited for or prepared
        run = self.prepare()
        loop = loop_factory(family)(run, strategy)
        resume = engine.resume
        if resume is not None:
            self.rows = [dict(r) for r in resume["rows"]]
            self.wall_before = float(resume["wall_s"])
            engine.cohort_seed = resume["cohort_seed"]
            loop.restore(resume["loop"], resume["strategy_state"], resume["params"])
        summary = RunSummary(rounds=sc.planned_rounds, last_row=dict(self.rows[-1]) if self.rows else {})
        start = time.monotonic()
        self.last_checkpoint_at = start
        done = 0 if not self.rows else int(self.rows[-1]["round"])
        while True:
            t0 = time.monotonic()
            result = loop.step()
            if result is None:
                break
            row = self.finish_row(loop, result, start=start, t0=t0)
            engine.recorder.write_round(row)
            self.rows.append(engine.released(row))
            engine.on_round(row)
            summary.last_row, summary.rounds, done = row, result.index, result.index
            if result.last:
                break
            if engine.stop:
                path = self.checkpoint(loop, done, start)
                raise RunStopped(engine.stop.signal_name or "SIGINT", step=done, checkpoint=path)
            if self.checkpoint_due(done):
                self.checkpoint(loop, done, start)
        self.checkpoint(loop, done, start, final=True)
        return summary

    def finish_row(self, loop: Loop, result: StepResult, *, start: float, t0: float) -> dict[str, Any]:
        """The family's row with the evaluation (when due) and the step's timings added by the driver."""
        row = {"round": result.index, **{k: v for k, v in result.row.items() if k != "round"}}
        t_eval = time.monotonic()
        if result.evaluate:
            row |= loop.evaluate()
        done = time.monotonic()
        t_replies = result.t_replies if result.t_replies is not None else t_eval
        t_aggregated = result.t_aggregated if result.t_aggregated is not None else t_eval
        row |= {
            "wall_time_s": round(self.wall_before + done - start, 4),
            "round_wall_s": round(done - t0, 4),
            "time_dispatch_s": round(max(0.0, t_replies - t0 - result.train_s), 4),
            "time_train_s": round(result.train_s, 4),
            "time_aggregate_s": round(t_aggregated - t_replies, 4),
            "time_eval_s": round(done - t_aggregated, 4),
            **{k: round(v, 4) for k, v in result.extra_timings.items()},
        }
        return row

    def checkpoint_due(self, step: int) -> bool:
        out = self.engine.scenario.output
        by_steps = bool(out.checkpoint_every) and step % out.checkpoint_every == 0
        by_time = (
            bool(out.checkpoint_every_s)
            and time.monotonic() - self.last_checkpoint_at >= out.checkpoint_every_s
        )
        return by_steps or by_time

    def checkpoint(self, loop: Loop, step: int, start: float, *, final: bool = False) -> Any:
        """Write a checkpoint after step ``step``: the model and strategy state, and everything resuming needs."""
        params, strategy_state = loop.result()
        resume = {
            "format": CHECKPOINT_FORMAT,
            "fedsim_version": __version__,
            "scenario": self.engine.scenario.fingerprint(),
            "family": type(loop).family,
            "finished": final,
            "step": step,
            "rows": self.rows,
            "wall_s": self.wall_before + time.monotonic() - start,
            "cohort_seed": self.engine.cohort_seed,
            "loop": cpu_state(loop.checkpoint_state()) if not final else {},
        }
        path = self.engine.recorder.save_checkpoint(
            round=step,
            params=cpu_state(params),
            strategy_state=cpu_state(strategy_state),
            final=final,
            resume=resume,
        )
        self.last_checkpoint_at = time.monotonic()
        return path
