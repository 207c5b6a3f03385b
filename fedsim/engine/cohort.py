"""Training a worker's cohort of logical clients for one round, reduced to one sum.

``train_cohort`` is the single swappable function between a worker's message handling and the training
itself: the sequential trainer here runs the clients one after another in this process (pfl-research's
way); the vectorised trainer (``fedsim.engine.vectorized``, ``torch.func`` over stacked clients) has the same
signature and is chosen by ``engine.vectorize``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from clients.local_sgd import train_local
from fedsim.data import FederatedData
from fedsim.engine.accumulate import CohortAccumulator
from fedsim.engine.vectorized import train_cohort_vectorized, vectorizable
from fedsim.errors import ConfigError
from fedsim.protocol import ClientTask, TrainConfig, WorkerResult

log = logging.getLogger("fedsim")

CohortTrainer = Callable[
    [nn.Module, Mapping[str, torch.Tensor], Sequence[ClientTask], FederatedData, TrainConfig], WorkerResult
]


LocalTrainer = Callable[[nn.Module, torch.Tensor, torch.Tensor, ClientTask], tuple[int, float, dict[str, float]]]
"""Trains one client in place; returns its examples, mean loss and diagnostics."""


def train_cohort_sequential(
    model: nn.Module,
    global_params: Mapping[str, torch.Tensor],
    tasks: Sequence[ClientTask],
    data: FederatedData,
    cfg: TrainConfig,
) -> WorkerResult:
    """Train each client from ``global_params`` in turn; return Σ n_i (θ_i − θ) over the usable ones.

    Training runs on the model's device (``engine.device``); the reply is on the CPU. A client whose new
    weights are not finite is left out and listed in ``failed`` (the run goes on). Only floating-point entries
    of the state dict are averaged; integer buffers keep the global value. With sample-level DP each client
    runs DP-SGD through Opacus.
    """
    device = next(model.parameters()).device
    acc = CohortAccumulator(global_params, cfg.clip, tasks)
    train_one = _dp_sgd_trainer(cfg) if cfg.sample_dp is not None else _sgd_trainer(cfg)
    for task in tasks:
        model.load_state_dict(global_params, strict=True)
        x, y = (t.to(device) for t in data.client_data(task.cid))
        n, loss, stats = train_one(model, x, y, task)
        if n:
            acc.add(task.cid, model.state_dict(), n, loss, stats)
    return acc.finish()


def _sgd_trainer(cfg: TrainConfig) -> LocalTrainer:
    def train_one(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: ClientTask):
        local = train_local(
            model,
            x,
            y,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            optimizer_args=cfg.optimizer_args,
            generator=torch.Generator().manual_seed(task.seed),
        )
        return local.num_examples, local.mean_loss, {}

    return train_one


def _dp_sgd_trainer(cfg: TrainConfig) -> LocalTrainer:
    """Sample-level DP: each client's DP-SGD through Opacus (``clients.local_dp_sgd``)."""
    from clients.dp_sgd import client_dp_generators  # opacus: imported by DP runs only
    from clients.local_dp_sgd import train_local_dp

    dp = cfg.sample_dp
    assert dp is not None

    def train_one(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: ClientTask):
        sampling, noise = client_dp_generators(task.seed, secure=dp.secure)
        local = train_local_dp(
            model,
            x,
            y,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            optimizer_args=cfg.optimizer_args,
            max_norm=dp.max_norm,
            noise_multiplier=dp.noise_multiplier,
            sample_generator=sampling,
            noise_generator=noise,
        )
        return local.num_examples, local.mean_loss, local.stats

    return train_one


def select_cohort_trainer(vectorize: str, model: nn.Module, cfg: TrainConfig) -> CohortTrainer:
    """The cohort trainer for ``engine.vectorize``.

    ``off``: sequential. ``on``: vectorised (a :class:`ConfigError` if the model/optimizer cannot be).
    ``auto``: vectorised where possible, else sequential, saying why once in the log.
    """
    if vectorize == "off":
        return train_cohort_sequential
    ok, why = vectorizable(model, cfg)
    if ok:
        return train_cohort_vectorized
    if vectorize == "on":
        raise ConfigError("engine.vectorize", f"'auto' or 'off' here, because {why}", "on")
    if why not in _explained:
        _explained.add(why)
        log.warning("fedsim: training clients one after another (engine.vectorize: auto): %s", why)
    return train_cohort_sequential


_explained: set[str] = set()
