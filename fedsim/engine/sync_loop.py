"""The FedAvg family's loop: synchronous rounds of a sampled cohort (FedAvg, FedAvgM, FedAdam, FedYogi, with
client- or sample-level DP).

A round asks the strategy for its cohort, sends each worker ONE message with the model and its logical clients,
takes one reply per worker (with the round deadline, or until the plan's quorum), sums the workers' reduced sums
and lets the strategy aggregate. Randomness comes from the streams of ``fedsim.randomness``: availability,
failures, client seeds and non-DP cohorts from the scenario seed; a DP run's cohorts from a secret seed the
engine holds (``Engine.cohort_seed``), drawn from the whole population before offline clients are dropped, so the
accountant's q = s/N is what an observer of the public seed faces. Every round's draws are keyed by the round
number, so the loop's state between rounds is the model, the strategy state and the virtual clock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from fedsim.engine.loop import RunContext, StepResult
from fedsim.engine.setup import noise_generator
from fedsim.protocol import WorkerResult
from fedsim.randomness import Stream, generator
from strategies import ReducedUpdates
from strategies.base import RoundPlan


def reduce_replies(results: Sequence[WorkerResult], params: Mapping[str, torch.Tensor]) -> ReducedUpdates:
    """Sum the workers' reduced sums into one :class:`ReducedUpdates`."""
    total = {k: torch.zeros_like(v) for k, v in params.items() if v.is_floating_point()}
    for r in results:
        for k, v in r.weighted_delta_sum.items():
            total[k] = total[k] + v
    return ReducedUpdates(
        weighted_delta_sum=total,
        weight_sum=sum(r.weight_sum for r in results),
        num_clients=sum(len(r.client_ids) for r in results),
        update_norms=tuple(x for r in results for x in r.update_norms),
        client_stats={
            name: tuple(x for r in results for x in r.client_stats.get(name, []))
            for name in sorted({n for r in results for n in r.client_stats})
        },
    )


def draw_cohort(
    strategy: Any,
    state: Any,
    *,
    round: int,
    population: int,
    online: np.ndarray,
    rng: np.random.Generator,
    secret_rng: np.random.Generator | None,
) -> tuple[RoundPlan, list[int]]:
    """A synchronous round's cohort: the strategy's plan and, of its clients, those online (in plan order).

    Without ``secret_rng`` (a run without client-level DP) the strategy picks among the ``online`` clients with
    the public ``rng``. With it (client-level DP) the strategy samples from the whole population with the secret
    stream and the offline clients are dropped afterwards: each client is then in the sample with the q = s/N
    the accountant is told, whatever the availability, and who was sampled cannot be replayed from the public
    seed. (Sampling among the online clients instead would give an online client q = s/N_online > s/N for a
    fixed-size cohort.)
    """
    if secret_rng is None:
        plan = strategy.configure_round(state, round=round, available=online, rng=rng)
        return plan, list(plan.client_ids)
    plan = strategy.configure_round(state, round=round, available=np.arange(population), rng=secret_rng)
    up = set(online.tolist())
    return plan, [c for c in plan.client_ids if c in up]


def mechanism_fields(scenario: Mapping[str, Any], strategy: Any, plan: RoundPlan) -> dict[str, float]:
    """The DP mechanism a round ran, for its metrics row, from the settings the workers were sent (the DP
    wrapper adds the update's ``dp_noise_std`` and ``dp_clip``): adaptive clipping's count noise and
    sensitivity; sample-level DP's per-step noise std σ·C and C."""
    if scenario.get("privacy") is None:
        return {}
    from fedsim.engine.messages import train_config
    from strategies.dp import CENTRED_COUNT_SENSITIVITY, ClientLevelDP

    cfg = train_config(scenario, plan.config)
    if cfg.sample_dp is not None:
        dp = cfg.sample_dp
        return {"dp_noise_std": dp.noise_multiplier * dp.max_norm, "dp_clip": dp.max_norm}
    if isinstance(strategy, ClientLevelDP) and strategy.adaptive:
        sensitivity = CENTRED_COUNT_SENSITIVITY  # what the released centred count moves by (strategies.dp)
        return {"dp_count_noise_std": strategy.count_noise_std, "dp_count_sensitivity": sensitivity}
    return {}


class SyncLoop:
    """Synchronous rounds of the FedAvg family, ``scenario.rounds`` of them."""

    family: ClassVar[str] = "sync"
    privacy_levels: ClassVar[frozenset[str]] = frozenset({"client", "sample"})

    def __init__(self, run: RunContext, strategy: Any) -> None:
        sc = run.scenario
        self.run = run
        if sc.privacy is not None:
            from strategies.dp import client_level_dp, sample_level_dp

            assert run.privacy is not None  # the driver resolved the plan and spend
            if sc.privacy.level == "sample":
                strategy = sample_level_dp(strategy, *run.privacy)
            else:
                strategy = client_level_dp(strategy, *run.privacy, noise_generator(sc))
        self.strategy = strategy
        self.params = run.params
        self.strategy_state = strategy.init(self.params)
        self.round = 0
        self.virtual_time = 0.0

    def step(self) -> StepResult | None:
        run, sc, engine = self.run, self.run.scenario, self.run.engine
        if self.round >= sc.rounds:
            return None
        rnd = self.round + 1
        n = sc.population.clients
        rng = generator(sc.seed, Stream.ROUND, rnd)
        online = np.flatnonzero(run.profiles.online(np.arange(n), self.virtual_time, rng))
        if run.owners is not None:  # deployment: only clients whose device is connected now can be selected
            connected = set(int(node) for node in run.grid.get_node_ids())
            online = np.asarray([c for c in online if run.owners.get(int(c)) in connected], dtype=np.int64)
        # a DP run's cohort is drawn from its secret stream (the scenario seed's with privacy.insecure_seed);
        # sample-level DP claims no amplification by the cohort, so it is drawn among the online clients
        secret_cohort = sc.privacy is not None and sc.privacy.level == "client"
        secret_rng = None if engine.cohort_seed is None else generator(engine.cohort_seed, Stream.COHORT, rnd)
        plan, present = draw_cohort(
            self.strategy, self.strategy_state, round=rnd, population=n, online=online,
            rng=secret_rng if secret_rng is not None and not secret_cohort else rng,
            secret_rng=secret_rng if secret_cohort else None,
        )  # fmt: skip
        fails = rng.random(len(present)) < run.profiles.failure
        started = [c for c, f in zip(present, fails, strict=True) if not f]
        replies = engine.train_round(
            run.grid, run.nodes, rnd, self.params, started, plan.config, owners=run.owners, quorum=plan.quorum
        )
        results = replies.results
        t_replies = time.monotonic()
        agg = self.strategy.aggregate(self.strategy_state, self.params, reduce_replies(results, self.params))
        self.params, self.strategy_state = agg.params, agg.state
        t_aggregated = time.monotonic()

        trained = [c for r in results for c in r.client_ids]
        examples = {c: k for r in results for c, k in zip(r.client_ids, r.num_examples, strict=True)}
        round_virtual = max(
            (
                run.profiles.duration(
                    c, examples=examples[c], epochs=sc.client.epochs, model_bytes=run.model_bytes
                )
                for c in trained
            ),
            default=0.0,
        )
        self.virtual_time += round_virtual
        self.round = rnd
        losses = [(k, loss) for r in results for k, loss in zip(r.num_examples, r.train_loss, strict=True)]
        row: dict[str, Any] = {
            "round": rnd,
            "virtual_time_s": round(self.virtual_time, 6),
            "round_virtual_s": round(round_virtual, 6),
            "selected": len(plan.client_ids),
            "clients": len(trained),
            "dropped": len(plan.client_ids) - len(trained),
            "dropped_offline": len(plan.client_ids) - len(present),
            "dropped_failure": int(fails.sum()),
            "dropped_timeout": len(replies.lost_timeout),
            "dropped_unavailable": len(replies.lost_unavailable),
            "dropped_late": len(replies.late),
            "dropped_nonfinite": sum(len(r.failed) for r in results),
            "train_loss": (sum(k * loss for k, loss in losses) / sum(k for k, _ in losses))
            if losses
            else None,
            **{k: float(v) for k, v in agg.metrics.items()},
            **mechanism_fields(engine.scenario_dict, self.strategy, plan),
        }
        last = rnd == sc.rounds
        return StepResult(
            row=row, index=rnd, last=last, evaluate=run.evaluation_due(rnd, last=last),
            train_s=max((r.train_s for r in results), default=0.0), t_replies=t_replies, t_aggregated=t_aggregated,
            extra_timings={"time_round_trip_s": replies.round_trip_s},
        )  # fmt: skip

    def evaluate(self) -> dict[str, Any]:
        from fedsim.engine.rounds import evaluate

        model, data = self.run.model, self.run.data
        model.load_state_dict(self.params)
        loss, accuracy = evaluate(model, data.test_x, data.test_y)
        return {"test_loss": loss, "test_accuracy": accuracy}

    def result(self) -> tuple[dict[str, torch.Tensor], Any]:
        return self.params, self.strategy_state

    def checkpoint_state(self) -> dict[str, Any]:
        return {"round": self.round, "virtual_time": self.virtual_time}

    def restore(
        self, state: Mapping[str, Any], strategy_state: Any, params: Mapping[str, torch.Tensor]
    ) -> None:
        self.round, self.virtual_time = int(state["round"]), float(state["virtual_time"])
        self.params, self.strategy_state = dict(params), strategy_state
