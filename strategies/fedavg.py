"""FedAvg and the FedOpt family (FedAvgM, FedAdam, FedYogi) as one strategy with a server optimizer.

The example-weighted mean of the client models defines the pseudo-gradient Δ = θ − Σ n_i θ_i / Σ n_i; the
server optimizer (a gradient-core chain) turns it into the step. ``sgd`` with lr 1 is plain FedAvg.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017,
    arXiv 1602.05629. Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from fedsim.errors import ConfigError
from fedsim.gradcore import GradientTransformation, apply_updates
from strategies.base import AggregateResult, Params, ReducedUpdates, RoundPlan
from strategies.server_optimizers import build_server_optimizer


class FedAvgState(NamedTuple):
    """Server optimizer state (a gradient-core state) and the number of aggregations done."""

    opt_state: Any
    rounds_aggregated: int


def sample_clients(
    available: Sequence[int] | np.ndarray, k: int, rng: np.random.Generator
) -> tuple[int, ...]:
    """Uniformly choose ``min(k, len(available))`` distinct clients, returned sorted."""
    if len(available) <= k:
        return tuple(sorted(int(c) for c in available))
    picked = rng.choice(np.asarray(available, dtype=np.int64), size=k, replace=False)
    return tuple(sorted(int(c) for c in picked))


def pseudo_gradient(params: Params, updates: ReducedUpdates) -> dict[str, torch.Tensor]:
    """Δ = θ − weighted mean(θ_i) = −Σ w_i (θ_i − θ) / Σ w_i, per tensor."""
    if updates.weight_sum <= 0:
        raise ValueError("pseudo_gradient needs a positive weight sum")
    return {k: -updates.weighted_delta_sum[k].to(params[k].dtype) / updates.weight_sum for k in params}


@dataclass(frozen=True)
class FedAvg:
    """Sample ``clients_per_round`` clients uniformly; example-weighted mean; server optimizer on Δ.

    Args:
        clients_per_round: cohort size (fewer when fewer clients are available).
        server_optimizer: the scenario's ``strategy.server_optimizer`` mapping ({name, **kwargs}).
    """

    family: ClassVar[str] = "sync"
    """The loop that runs it (``fedsim.engine.loop.FAMILIES``)."""

    clients_per_round: int
    server_optimizer: Mapping[str, Any]

    @cached_property
    def optimizer(self) -> GradientTransformation:
        return build_server_optimizer(self.server_optimizer)

    def init(self, params: Params) -> FedAvgState:
        return FedAvgState(opt_state=self.optimizer.init(params), rounds_aggregated=0)

    def configure_round(
        self,
        state: FedAvgState,
        *,
        round: int,
        available: Sequence[int] | np.ndarray,
        rng: np.random.Generator,
    ) -> RoundPlan:
        return RoundPlan(client_ids=sample_clients(available, self.clients_per_round, rng))

    def aggregate(self, state: FedAvgState, params: Params, updates: ReducedUpdates) -> AggregateResult:
        if updates.num_clients == 0 or updates.weight_sum <= 0:
            return AggregateResult(params=dict(params), state=state, metrics={"aggregated": 0.0})
        return self.step(state, params, pseudo_gradient(params, updates))

    def step(self, state: FedAvgState, params: Params, delta: Mapping[str, torch.Tensor]) -> AggregateResult:
        """Apply the server optimizer to a pseudo-gradient Δ (also the entry point of the DP wrapper, which
        builds Δ from a noised sum)."""
        steps, opt_state = self.optimizer.update(delta, state.opt_state, params)
        new_params = apply_updates(params, steps)
        norm = torch.sqrt(sum((d.double() ** 2).sum() for d in delta.values())).item()
        return AggregateResult(
            params=dict(new_params),
            state=FedAvgState(opt_state, state.rounds_aggregated + 1),
            metrics={"aggregated": 1.0, "pseudo_grad_norm": norm},
        )


_DEFAULT_SERVER_OPT = {
    "fedavg": None,
    "fedavgm": {"name": "sgd", "lr": 1.0, "momentum": 0.9},
    "fedadam": {"name": "adam", "lr": 0.1},
    "fedyogi": {"name": "yogi", "lr": 0.01},
}


def make_fedavg_family(name: str):
    """Factory for the registry: ``fedavgm``/``fedadam``/``fedyogi`` are FedAvg whose server optimizer
    defaults to momentum/Adam/Yogi when the scenario leaves ``server_optimizer`` at its default (sgd, lr 1)."""

    def factory(
        *, clients_per_round: int, args: Mapping[str, Any], server_optimizer: Mapping[str, Any]
    ) -> FedAvg:
        if args:
            raise ConfigError(
                f"strategy.args.{next(iter(args))}", f"absent: {name} takes no strategy.args", dict(args)
            )
        opt = dict(server_optimizer)
        default = _DEFAULT_SERVER_OPT[name]
        if default is not None and opt == {"name": "sgd", "lr": 1.0}:
            opt = dict(default)
        build_server_optimizer(opt)  # validate now: errors name the field before any training
        return FedAvg(clients_per_round=clients_per_round, server_optimizer=opt)

    factory.__doc__ = f"Build the {name!r} strategy."
    return factory
