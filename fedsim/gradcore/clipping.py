"""Norm computations and clipping over all tensors of an update.

Why this module exists: bounding an update's L2 norm is the sensitivity bound of client-level DP and a stabiliser
for training; it is the one place in the core where a reduction meets the leading client dimension. Reductions
here take ``batch_dims``: the first ``batch_dims`` axes of every tensor index clients (they must agree across
tensors) and the norm is taken over all remaining axes of all tensors, once per client. ``batch_dims=0`` treats
the whole update as one vector; ``batch_dims=1`` clips each client of a ``[K, *shape]`` cohort separately.
"""

from __future__ import annotations

import torch

from fedsim.gradcore.base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    Updates,
    expand_left,
    tree_map,
)


def global_norm(updates: Updates, *, batch_dims: int = 0) -> torch.Tensor:
    """L2 norm over all tensors and all axes after the first ``batch_dims`` (accumulated in >= float32).

    Returns:
        A tensor of shape ``[]`` (``batch_dims=0``) or the common leading shape, e.g. ``[K]``.

    Raises:
        ValueError: if a tensor has fewer than ``batch_dims`` axes or ``updates`` is empty.
    """
    if not updates:
        raise ValueError("global_norm needs at least one tensor. Got an empty mapping.")
    total: torch.Tensor | None = None
    for name, x in updates.items():
        if x.dim() < batch_dims:
            raise ValueError(
                f"tensor {name!r} must have at least {batch_dims} axes. Got shape {tuple(x.shape)}."
            )
        sq = x.to(torch.promote_types(x.dtype, torch.float32)).square()
        if x.dim() > batch_dims:  # torch.sum(dim=()) would reduce every axis
            sq = sq.sum(dim=tuple(range(batch_dims, x.dim())))
        total = sq if total is None else total + sq
    assert total is not None
    return torch.sqrt(total)


def clip_by_global_norm(max_norm: float, *, batch_dims: int = 0) -> GradientTransformation:
    """Scale the update by ``min(1, max_norm / ||update||)`` (per client when ``batch_dims=1``).

    The factor is ``max_norm / max(||update||, max_norm)``: exactly 1 below the bound, and a zero update stays zero
    (no division by a zero norm).

    Raises:
        ValueError: if ``max_norm`` is not a positive finite number.

    References:
        Pascanu et al., "On the difficulty of training recurrent neural networks", ICML 2013, arXiv 1211.5063;
        McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018, arXiv 1710.06963.
    """
    if not (0.0 < float(max_norm) < float("inf")):
        raise ValueError(f"max_norm must be a positive finite number. Got {max_norm!r}.")

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], EmptyState]:
        del params, state
        norm = global_norm(updates, batch_dims=batch_dims)
        # tensor / tensor: ``float / tensor`` is computed as ``reciprocal * float`` and would not give exactly 1
        factor = torch.full_like(norm, max_norm) / torch.clamp(norm, min=max_norm)
        return tree_map(lambda u: u * expand_left(factor, u), updates), EmptyState()

    return GradientTransformation(init, update)


def clip_rows(rows: torch.Tensor, radius: float) -> tuple[torch.Tensor, int]:
    """Each row of ``rows`` ``[n, d]`` scaled to L2 norm at most ``radius``, and how many rows were scaled.

    ``radius = 0`` gives exact zeros (every non-zero row counts as clipped); ``radius = inf`` leaves the rows
    unchanged. A zero row stays zero (``clip_by_global_norm`` never divides by 0). DIFF2's per-example clipping
    (clients and the Ray-free core) goes through here.
    """
    if radius == 0.0:
        return torch.zeros_like(rows), int((torch.linalg.vector_norm(rows, dim=1) > 0).sum())
    if radius == float("inf"):
        return rows, 0
    clipped, _ = clip_by_global_norm(radius, batch_dims=1).update({"g": rows}, None)
    return clipped["g"], int((torch.linalg.vector_norm(rows, dim=1) > radius).sum())
