"""Training a worker's cohort of logical clients for one round, reduced to one sum.

``train_cohort`` is the single swappable function between a worker's message handling and the training
itself: the sequential trainer here runs the clients one after another in this process (pfl-research's
way); a vectorised trainer (``torch.func`` over stacked clients) plugs in under the same signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from clients.local_sgd import train_local
from fedsim.data import FederatedData
from fedsim.engine.protocol import ClientTask, TrainConfig, WorkerResult
from fedsim.errors import ConfigError

CohortTrainer = Callable[
    [nn.Module, Mapping[str, torch.Tensor], Sequence[ClientTask], FederatedData, TrainConfig], WorkerResult
]


def train_cohort_sequential(
    model: nn.Module,
    global_params: Mapping[str, torch.Tensor],
    tasks: Sequence[ClientTask],
    data: FederatedData,
    cfg: TrainConfig,
) -> WorkerResult:
    """Train each client from ``global_params`` in turn; return Σ n_i (θ_i − θ) over the usable ones.

    Training runs on the model's device (``engine.device``); the reply is on the CPU. A client whose new
    weights are not finite is left out and listed in ``failed`` (the run goes on). Only
    floating-point entries of the state dict are averaged; integer buffers keep the global value.
    """
    device = next(model.parameters()).device
    float_keys = [k for k, v in global_params.items() if v.is_floating_point()]
    delta_sum = {k: torch.zeros_like(global_params[k], dtype=torch.float64) for k in float_keys}
    result = WorkerResult(delta_sum, 0.0, [], [], [], [])
    for task in tasks:
        model.load_state_dict(global_params, strict=True)
        x, y = (t.to(device) for t in data.client_data(task.cid))
        gen = torch.Generator().manual_seed(task.seed)
        local = train_local(
            model,
            x,
            y,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            optimizer_args=cfg.optimizer_args,
            generator=gen,
        )
        if local.num_examples == 0:
            continue
        new = model.state_dict()
        deltas = {k: new[k].detach().cpu().double() - global_params[k].double() for k in float_keys}
        if not all(torch.isfinite(d).all() for d in deltas.values()):
            result.failed.append(task.cid)
            continue
        for k, d in deltas.items():
            delta_sum[k] += local.num_examples * d
        result.weight_sum += local.num_examples
        result.client_ids.append(task.cid)
        result.num_examples.append(local.num_examples)
        result.train_loss.append(local.mean_loss)
    result.weighted_delta_sum = {k: v.to(global_params[k].dtype) for k, v in delta_sum.items()}
    return result


def select_cohort_trainer(vectorize: str) -> CohortTrainer:
    """The cohort trainer for ``engine.vectorize``: only the sequential path exists in this version."""
    if vectorize in ("auto", "off"):
        return train_cohort_sequential
    raise ConfigError(
        "engine.vectorize",
        "'auto' or 'off' in this version (vectorised training is not implemented yet)",
        vectorize,
    )
