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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import Message
from flwr.serverapp import Grid
from torch import nn
from torch.func import functional_call

from clients.diff2_client import flat_spec, flatten, unflatten
from fedsim import randomness
from fedsim.data import FederatedData
from fedsim.engine.messages import MESSAGE_TYPE_DIFF2, decode_diff2_reply, encode_diff2_request
from fedsim.engine.placement import assign, partition_owners
from fedsim.engine.rounds import RunSummary, round_timings
from fedsim.engine.setup import noise_generator
from fedsim.engine.transport import iter_replies
from fedsim.errors import ConfigError, EngineError
from fedsim.scenario.devices import DeviceProfiles
from strategies.diff2 import DIFFERENCE, Diff2Strategy, finish_round, init, plan_round

if TYPE_CHECKING:
    from fedsim.engine.server import Engine


def check_full_participation(engine: Engine, data: FederatedData) -> None:
    """The settings DIFF2/DP-GD need, checked again here (``fedsim.scenario.load`` checks them first)."""
    sc = engine.scenario
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


def run_diff2_loop(
    engine: Engine,
    grid: Grid,
    *,
    nodes: Sequence[int],
    pending_prepare: dict[str, int],
    data: FederatedData,
    model: nn.Module,
    params: dict[str, torch.Tensor],
    strategy: Diff2Strategy,
) -> RunSummary:
    """Run ``scenario.rounds`` rounds of ``strategy`` (DIFF2-GD or DP-GD) on the workers of ``grid``."""

    sc = engine.scenario
    check_full_participation(engine, data)
    population = sc.population.clients
    sizes = [data.num_examples(c) for c in range(population)]
    if min(sizes) < 1:
        raise ConfigError("data", "a partition in which every client has training examples", "one has none")
    epsilon_at: Mapping[int, Mapping[str, float]] = {}
    if sc.privacy is not None:
        from fedsim.privacy.plan import plan_and_spend
        from strategies.dp import epsilon_every_round

        engine.privacy = engine.privacy or plan_and_spend(sc, sizes)
        plan, spent = engine.privacy
        assert plan.schedule is not None
        strategy = strategy.with_noise(plan.schedule.noise_multiplier1)
        epsilon_at = epsilon_every_round(spent)
    cfg = strategy.config
    generator = noise_generator(sc)
    identities = engine.await_prepared(grid, pending_prepare)
    owners = partition_owners(identities, population=population, mode=engine.placement)
    by_node = {n: c for n, c in assign(range(population), nodes, owners).items() if c}
    spec = flat_spec(model)
    model_bytes = sum(v.numel() * v.element_size() for v in params.values())
    profiles = DeviceProfiles.sample(
        sc.population.devices, population, randomness.generator(sc.seed, randomness.Stream.DEVICE)
    )
    state = init(flatten(params, spec))
    summary = RunSummary(rounds=sc.rounds)
    start, virtual_time = time.monotonic(), 0.0
    for rnd in range(1, sc.rounds + 1):
        t0 = time.monotonic()
        plan_r = plan_round(cfg, state)
        messages = [
            Message(
                content=encode_diff2_request(
                    scenario=engine.scenario_dict, round=rnd, x=state.x, kind=plan_r.kind, radius=plan_r.radius,
                    client_ids=cids,
                ),
                message_type=MESSAGE_TYPE_DIFF2,
                dst_node_id=node,
            )
            for node, cids in by_node.items()
        ]  # fmt: skip
        node_of = dict(zip(grid.push_messages(messages), by_node, strict=True))
        replies = {}
        timeout = sc.engine.round_timeout_s
        for reply in iter_replies(grid, node_of, timeout_s=timeout, max_poll_s=engine.max_poll_s):
            node = node_of[reply.metadata.reply_to_message_id]
            if reply.has_error():
                raise EngineError(
                    f"worker {node} failed in round {rnd} of {sc.strategy.name}, which needs every client every "
                    f"round: {reply.error.reason}"
                )
            replies[node] = decode_diff2_reply(reply.content)
        missing = sorted(n for n in by_node if n not in replies)
        if missing:
            raise EngineError(
                f"engine.round_timeout_s: workers {missing} did not answer round {rnd} within {timeout:g} s; "
                f"{sc.strategy.name} needs every client every round"
            )
        t_replies = time.monotonic()
        ordered = [replies[n] for n in sorted(replies)]
        clipped_sum = sum((r.clipped_sum for r in ordered[1:]), ordered[0].clipped_sum.clone())
        grad = sum((r.grad_sum for r in ordered[1:]), ordered[0].grad_sum.clone()) / population
        state, info = finish_round(
            cfg, state, plan_r, clipped_sum, clients=population, min_examples=min(sizes), generator=generator
        )
        if not bool(torch.isfinite(state.x).all()):
            raise EngineError(f"round {rnd}: the iterate is not finite (lower strategy.args.lr)")
        t_aggregated = time.monotonic()
        passes = 2 if info.kind == DIFFERENCE else 1  # gradients at x_{r−1} and x_{r−2}
        round_virtual = float(
            max(
                profiles.duration(c, examples=sizes[c], epochs=passes, model_bytes=model_bytes)
                for c in range(population)
            )
        )
        virtual_time += round_virtual
        rows = sum(r.rows for r in ordered)
        row: dict[str, Any] = {
            "round": rnd,
            "virtual_time_s": round(virtual_time, 6),
            "round_virtual_s": round(round_virtual, 6),
            "selected": population,
            "clients": sum(len(r.client_ids) for r in ordered),
            "dropped": 0,
            "kind": info.kind,
            "radius": info.radius,
            "noise_multiplier": info.noise_multiplier,
            "noise_std": info.noise_std,
            "clip_fraction": sum(r.clipped_rows for r in ordered) / rows,
            "train_loss": sum(r.loss_sum for r in ordered) / population,
            "grad_norm": float(torch.linalg.vector_norm(grad)),
            **{f"epsilon_{acc}": float(eps) for acc, eps in epsilon_at.get(rnd, {}).items()},
        }
        if rnd % sc.evaluation.every == 0 or rnd == sc.rounds:
            row["test_loss"] = test_mse(model, state.x, spec, data.test_x, data.test_y)
        train_s = max(r.train_s for r in ordered)
        row |= round_timings(
            start=start, t0=t0, t_replies=t_replies, t_aggregated=t_aggregated, train_s=train_s
        )
        engine.recorder.write_round(row)
        every = sc.output.checkpoint_every
        if every and rnd % every == 0 and rnd != sc.rounds:
            engine.recorder.save_checkpoint(
                round=rnd, params=unflatten(state.x.clone(), spec), strategy_state=state._asdict()
            )
        engine.on_round(row)
        summary.last_row = row
    engine.recorder.save_checkpoint(
        round=sc.rounds, params=unflatten(state.x.clone(), spec), strategy_state=state._asdict(), final=True
    )
    return summary
