"""Per-layer (per-tensor) norms: clipping each layer on its own, and LAMB's trust ratio.

Why this module exists: layer-wise DP clipping bounds each layer's norm separately, and LAMB scales each layer's
step by ‖θ‖/‖update‖. Both are per-tensor reductions; with a leading client dimension (``batch_dims=1``) they
run once per client and layer.
"""

from __future__ import annotations

import torch

from fedsim.gradcore.base import NO_PARAMS_MSG, GradientTransformation, Params, Updates, stateless


def tensor_norm(x: torch.Tensor, *, batch_dims: int = 0, keepdim: bool = True) -> torch.Tensor:
    """L2 norm of one tensor over its axes after the first ``batch_dims`` (in >= float32): broadcastable against
    ``x`` (``keepdim``), or shaped ``x.shape[:batch_dims]``."""
    axes = tuple(range(batch_dims, x.dim()))
    sq = x.to(torch.promote_types(x.dtype, torch.float32)).square()
    return (sq.sum(dim=axes, keepdim=keepdim) if axes else sq).sqrt()


def clip_per_layer(max_norm: float, *, batch_dims: int = 0) -> GradientTransformation:
    """Scale each tensor by ``min(1, max_norm / ‖tensor‖)``: every layer's norm is at most ``max_norm``.

    References:
        McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018, arXiv 1710.06963
        (per-layer clipping).
    """
    if not (0.0 < float(max_norm) < float("inf")):
        raise ValueError(f"max_norm must be a positive finite number. Got {max_norm!r}.")

    def fn(updates: Updates, params: Params | None) -> dict[str, torch.Tensor]:
        out = {}
        for name, u in updates.items():
            norm = tensor_norm(u, batch_dims=batch_dims)
            factor = torch.full_like(norm, max_norm) / torch.clamp(norm, min=max_norm)
            out[name] = u * factor.to(u.dtype)
        return out

    return stateless(fn)


def scale_by_trust_ratio(
    *, min_norm: float = 0.0, trust_coefficient: float = 1.0, eps: float = 0.0, batch_dims: int = 0
) -> GradientTransformation:
    """LAMB's layer-wise trust ratio: each tensor's update times ``trust_coefficient·‖θ‖ / (‖update‖ + eps)``;
    the ratio is 1 where either norm is ``<= min_norm`` (as optax).

    References:
        You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020,
        arXiv 1904.00962.
    """

    def fn(updates: Updates, params: Params | None) -> dict[str, torch.Tensor]:
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        out = {}
        for name, u in updates.items():
            p_norm = tensor_norm(params[name], batch_dims=batch_dims)
            u_norm = tensor_norm(u, batch_dims=batch_dims)
            ratio = trust_coefficient * p_norm / (u_norm + eps)
            ratio = torch.where((p_norm <= min_norm) | (u_norm <= min_norm), torch.ones_like(ratio), ratio)
            out[name] = u * ratio.to(u.dtype)
        return out

    return stateless(fn)
