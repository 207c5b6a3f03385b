"""The engine's round loop for full-batch strategies with worker state: DIFF2-GD and DP-GD (issue 9).

Why this module exists: DIFF2's rounds differ from the FedAvg family's. Every round needs *every* client (its
recursion adds clipped gradient differences of all clients' examples), each client computes per-example
gradients on all its data at the current iterate x_{r−1} and, in difference rounds, at the previous one x_{r−2},
which its worker kept in its node state (``context.state``) from the round before; the server adds the noise
once to the aggregate and owns the recursion (``strategies.diff2.plan_round`` / ``finish_round``, the same code
as the Ray-free core). Each round the server sends each worker ONE message (``train.diff2``: x_{r−1}, the round's
kind and clip radius, the worker's logical clients) and gets one reduced sum back.

Full participation: a worker that fails, drops or misses the round deadline stops the run with a one-line
``EngineError`` (DIFF2 without a client's differences is not the algorithm, and its privacy accounting assumes
every round's mechanism is the planned one).

Metrics per round r: ``train_loss`` and ``grad_norm`` are f(x_{r−1}) and ‖∇f(x_{r−1})‖ (f = the mean over
clients of each client's mean squared loss; computed by the workers at the iterate they were sent, unclipped and
unnoised: simulation diagnostics, not released by the mechanism), ``test_loss`` is the MSE of x_r on the central
test set, ``clip_fraction`` the fraction of per-example rows clipped, ``noise_std`` the noise std on v_r.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from flwr.app import Message
from torch import nn
from torch.func import functional_call

from clients.diff2_client import flat_spec, flatten, unflatten
from fedsim.data import FederatedData
from fedsim.engine.loop import RunContext, StepResult
from fedsim.engine.messages import MESSAGE_TYPE_DIFF2, decode_diff2_reply, encode_diff2_request
from fedsim.engine.placement import assign
from fedsim.engine.setup import noise_generator
from fedsim.engine.transport import error_reason, iter_replies
from fedsim.errors import ConfigError, EngineError
from fedsim.scenario import Scenario
from strategies.diff2 import DIFFERENCE, Diff2State, Diff2Strategy, finish_round, init, plan_round


def check_full_participation(scenario: Scenario, data: FederatedData) -> None:
    """The settings DIFF2/DP-GD need, checked again here (``fedsim.scenario.load`` checks them first)."""
    sc = scenario
    if sc.strategy.clients_per_round != sc.population.clients:
        raise ConfigError(
            "strategy.clients_per_round",
            f"equal to population.clients ({sc.population.clients}) for {sc.strategy.name} (every client, every round)",
            sc.strategy.clients_per_round,
        )
    if data.task != "regression":
        raise ConfigError(
            "data.dataset",
            f"a regression dataset (diabetes, regression) for {sc.strategy.name}",
            sc.data.dataset,
        )


@torch.no_grad()
def test_mse(
    model: nn.Module, x: torch.Tensor, spec: Any, inputs: torch.Tensor, targets: torch.Tensor
) -> float:
    """Mean squared error of the parameters x on (inputs, targets)."""
    out = functional_call(model, unflatten(x, spec), (inputs,)).reshape(-1)
    return float(((out - targets) ** 2).mean())


class Diff2Loop:
    """``scenario.rounds`` full-batch rounds of DIFF2-GD or DP-GD (``strategies.diff2``) on the workers.

    Its state between rounds: the recursion's state (x_{r−1}, x_{r−2}, v_{r−1}), the noise generator's state and
    the virtual clock. The workers keep x_{r−1} for the next difference round; a restored loop sends x_{r−2} with
    its first round, so fresh workers can compute that round's differences.
    """

    family: ClassVar[str] = "diff2"
    privacy_levels: ClassVar[frozenset[str]] = frozenset({"sample"})

    def __init__(self, run: RunContext, strategy: Diff2Strategy) -> None:
        sc = run.scenario
        self.run = run
        check_full_participation(sc, run.data)
        population = sc.population.clients
        self.sizes = [run.data.num_examples(c) for c in range(population)]
        if min(self.sizes) < 1:
            raise ConfigError(
                "data", "a partition in which every client has training examples", "one has none"
            )
        self.epsilon_at: Mapping[int, Mapping[str, float]] = {}
        if sc.privacy is not None:
            from strategies.dp import epsilon_every_round

            assert run.privacy is not None  # the driver resolved the plan and spend
            plan, spent = run.privacy
            assert plan.schedule is not None
            strategy = strategy.with_noise(plan.schedule.noise_multiplier1)
            self.epsilon_at = epsilon_every_round(spent)
        self.cfg = strategy.config
        self.noise = noise_generator(sc)
        self.by_node = {n: c for n, c in assign(range(population), run.nodes, run.owners).items() if c}
        self.spec = flat_spec(run.model)
        self.state = init(flatten(run.params, self.spec))
        self.virtual_time = 0.0
        self.hand_over_previous = False  # True after a restore: the workers do not hold x_{r−2}

    def step(self) -> StepResult | None:
        run, sc = self.run, self.run.scenario
        rnd = self.state.round + 1
        if rnd > sc.rounds:
            return None
        population = sc.population.clients
        plan_r = plan_round(self.cfg, self.state)
        x_prev = self.state.x_prev if self.hand_over_previous else None
        messages = [
            Message(
                content=encode_diff2_request(
                    scenario=run.engine.scenario_dict, round=rnd, x=self.state.x, kind=plan_r.kind,
                    radius=plan_r.radius, client_ids=cids, x_prev=x_prev,
                ),
                message_type=MESSAGE_TYPE_DIFF2,
                dst_node_id=node,
            )
            for node, cids in self.by_node.items()
        ]  # fmt: skip
        node_of = dict(zip(run.grid.push_messages(messages), self.by_node, strict=True))
        replies = {}
        timeout = sc.engine.round_timeout_s
        for reply in iter_replies(run.grid, node_of, timeout_s=timeout, max_poll_s=run.engine.max_poll_s):
            node = node_of[reply.metadata.reply_to_message_id]
            if reply.has_error():
                raise EngineError(
                    f"worker {node} failed in round {rnd} of {sc.strategy.name}, which needs every client every "
                    f"round: {error_reason(reply)}"
                )
            replies[node] = decode_diff2_reply(reply.content)
        missing = sorted(n for n in self.by_node if n not in replies)
        if missing:
            raise EngineError(
                f"engine.round_timeout_s: workers {missing} did not answer round {rnd} within {timeout:g} s; "
                f"{sc.strategy.name} needs every client every round"
            )
        self.hand_over_previous = False
        t_replies = time.monotonic()
        ordered = [replies[n] for n in sorted(replies)]
        clipped_sum = sum((r.clipped_sum for r in ordered[1:]), ordered[0].clipped_sum.clone())
        grad = sum((r.grad_sum for r in ordered[1:]), ordered[0].grad_sum.clone()) / population
        self.state, info = finish_round(
            self.cfg, self.state, plan_r, clipped_sum, clients=population, min_examples=min(self.sizes),
            generator=self.noise,
        )  # fmt: skip
        if not bool(torch.isfinite(self.state.x).all()):
            raise EngineError(f"round {rnd}: the iterate is not finite (lower strategy.args.lr)")
        t_aggregated = time.monotonic()
        passes = 2 if info.kind == DIFFERENCE else 1  # gradients at x_{r−1} and x_{r−2}
        round_virtual = float(
            max(
                run.profiles.duration(c, examples=self.sizes[c], epochs=passes, model_bytes=run.model_bytes)
                for c in range(population)
            )
        )
        self.virtual_time += round_virtual
        rows = sum(r.rows for r in ordered)
        row: dict[str, Any] = {
            "virtual_time_s": round(self.virtual_time, 6),
            "round_virtual_s": round(round_virtual, 6),
            "selected": population,
            "clients": sum(len(r.client_ids) for r in ordered),
            "dropped": sum(len(r.failed) for r in ordered),
            "dropped_nonfinite": sum(len(r.failed) for r in ordered),
            "kind": info.kind,
            "radius": info.radius,
            "noise_multiplier": info.noise_multiplier,
            "noise_std": info.noise_std,
            "clip_fraction": sum(r.clipped_rows for r in ordered) / rows if rows else None,
            "train_loss": sum(r.loss_sum for r in ordered) / population,
            "grad_norm": float(torch.linalg.vector_norm(grad)),
            **{f"epsilon_{acc}": float(eps) for acc, eps in self.epsilon_at.get(rnd, {}).items()},
        }
        last = rnd == sc.rounds
        return StepResult(
            row=row, index=rnd, last=last, evaluate=run.evaluation_due(rnd, last=last),
            train_s=max(r.train_s for r in ordered), t_replies=t_replies, t_aggregated=t_aggregated,
        )  # fmt: skip

    def evaluate(self) -> dict[str, Any]:
        data = self.run.data
        return {"test_loss": test_mse(self.run.model, self.state.x, self.spec, data.test_x, data.test_y)}

    def result(self) -> tuple[dict[str, torch.Tensor], Any]:
        return unflatten(self.state.x.clone(), self.spec), self.state._asdict()

    def checkpoint_state(self) -> dict[str, Any]:
        return {"virtual_time": self.virtual_time, "noise": self.noise.get_state()}

    def restore(
        self, state: Mapping[str, Any], strategy_state: Any, params: Mapping[str, torch.Tensor]
    ) -> None:
        self.state = Diff2State(**strategy_state)
        self.virtual_time = float(state["virtual_time"])
        self.noise.set_state(state["noise"])
        self.hand_over_previous = True
