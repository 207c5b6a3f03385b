"""Scaling transforms: constant factors, schedules, learning rates and decoupled weight decay.

Why this module exists: the learning rate is the last link of every optimizer chain, and keeping it a separate
transform (rather than a field of each optimizer) is what lets one ``scale_by_adam`` serve Adam, AdamW, FedAdam and
LAMB. All transforms here are element-wise, so a leading client dimension passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from fedsim.gradcore.base import (
    NO_PARAMS_MSG,
    GradientTransformation,
    OptState,
    Params,
    Schedule,
    Updates,
    expand_left,
    identity,
    init_count,
    stateless,
    tree_map,
)


class ScaleByScheduleState(NamedTuple):
    """Number of updates seen so far (int64 tensor, ``[]`` or ``[K]``)."""

    count: torch.Tensor


def scale(factor: float) -> GradientTransformation:
    """Multiply every update by a constant ``factor``.

    References:
        Babuschkin et al., "The DeepMind JAX Ecosystem" (optax ``scale``), 2020.
    """
    plain = stateless(lambda updates, params: tree_map(lambda u: u * factor, updates))
    return plain._replace(trailing_scale=(identity(), float(factor)))


def scale_by_schedule(schedule: Schedule) -> GradientTransformation:
    """Multiply the updates by ``schedule(count)``, where ``count`` is 0 on the first update (optax convention).

    The schedule receives the int64 count tensor and may return a float or a tensor broadcastable from the left
    (shape ``[K]`` for stacked per-client counts).

    References:
        Babuschkin et al., "The DeepMind JAX Ecosystem" (optax ``scale_by_schedule``), 2020.
    """

    def init(params: Params) -> ScaleByScheduleState:
        return ScaleByScheduleState(count=init_count(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], ScaleByScheduleState]:
        del params
        factor = torch.as_tensor(schedule(state.count), dtype=torch.float64)
        out = tree_map(lambda u: u * expand_left(factor, u), updates)
        return out, ScaleByScheduleState(count=state.count + 1)

    return GradientTransformation(init, update)


def scale_by_learning_rate(lr: float | Schedule) -> GradientTransformation:
    """Multiply the updates by ``-lr`` (a constant, or a schedule of the step count): gradients become descent steps.

    References:
        Babuschkin et al., "The DeepMind JAX Ecosystem" (optax ``scale_by_learning_rate``), 2020.
    """
    if callable(lr):
        schedule: Callable[[torch.Tensor], float | torch.Tensor] = lr
        return scale_by_schedule(lambda count: -torch.as_tensor(schedule(count), dtype=torch.float64))
    return scale(-float(lr))


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """Add ``weight_decay * params`` to the updates (decoupled weight decay when placed after the moments).

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv 1711.05101.
    """

    def fn(updates: Updates, params: Params | None) -> dict[str, torch.Tensor]:
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        return tree_map(lambda u, p: u + weight_decay * p.to(u.dtype), updates, params)

    return stateless(fn)
