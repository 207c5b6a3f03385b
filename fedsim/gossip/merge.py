"""Gossip merge rules on stacked models: plain averaging and variance-corrected averaging.

Why this module exists: averaging N uncorrelated models shrinks each layer's weight variance by about 1/N, undoing
the initialisation's variance and delaying convergence (the "vanishing variance problem"). Tian et al. rescale each
averaged layer back to the mean variance of the models that went into it. Per layer l, with the node's own model
``W_self`` and the received ``W_1..W_N`` (``var`` and ``mean`` over the layer's elements, population variance)::

    A_l  = β·W_self,l + (1−β)·(1/N)·Σ_i W_i,l
    s2_l = (1/N)·Σ_i var(W_i,l)                                  mean variance of the RECEIVED models
    W_l ← mean(A_l) + (A_l − mean(A_l))·sqrt((s2_l + e)/(var(A_l) + e))

Invariants: ``mean(W_l) = mean(A_l)`` (the correction never moves a layer's mean), ``var(W_l) =
var(A_l)·(s2_l + e)/(var(A_l) + e)`` (``= s2_l`` for ``e = 0``), and identical inputs are left unchanged. Only
floating-point tensors with at least one axis are corrected; integer tensors, 0-d scalars and BatchNorm running
statistics and counters (``running_mean``, ``running_var``, ``num_batches_tracked``) take the plain average. A
layer whose average is constant (``var(A) + e = 0``) has no spread to rescale and keeps the plain average.

Shapes (``batch_dims``): ``own`` is ``[*shape]`` and ``received`` ``[N, *shape]`` (``batch_dims=0``), or a stack
of K merging nodes, ``own`` ``[K, *shape]`` and ``received`` ``[K, N, *shape]`` (``batch_dims=1``), with an
optional ``mask`` ``[K, N]`` marking which received slots hold a model (padding for nodes with fewer). A node with
no received model keeps its own. Arithmetic is float64, cast back to each tensor's dtype.

References:
    Tian, Al-Ars, Kitsak, Hofstee, "Vanishing Variance Problem in Fully Decentralized Neural-Network Systems",
    arXiv 2404.04616, 2024.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedsim.errors import ConfigError, UnknownNameError
from fedsim.gradcore import EmptyState, GradientTransformation, OptState, Params, Updates

RULES = ("plain", "corrected")
"""The merge rules: plain averaging with self-weight β, and variance-corrected averaging."""

PLAIN_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
"""Tensor names (suffixes) that are never variance-corrected: BatchNorm statistics and counters."""

DEFAULT_EPS = 1e-4
"""``e`` of the authors' later code (their first code used 0)."""


def check_merge_args(rule: str, beta: float, eps: float) -> None:
    """Raise a ``ConfigError`` naming ``gossip.merge.*`` for an unknown rule, β outside [0, 1] or a bad e."""
    if rule not in RULES:
        raise UnknownNameError("gossip.merge.rule", rule, list(RULES))
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ConfigError("gossip.merge.beta", "a number in [0, 1]", beta)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < math.inf:
        raise ConfigError("gossip.merge.eps", "a finite number >= 0", eps)


def is_corrected(name: str, tensor: torch.Tensor, *, batch_dims: int = 0) -> bool:
    """Whether the variance correction applies to this tensor (float, >= 1 axis, not a BatchNorm statistic)."""
    return tensor.is_floating_point() and tensor.dim() > batch_dims and not name.endswith(PLAIN_SUFFIXES)


def _check_shapes(own: torch.Tensor, received: torch.Tensor, mask: torch.Tensor | None, bd: int) -> None:
    lead, rest = own.shape[:bd], own.shape[bd:]
    if received.dim() != own.dim() + 1 or received.shape[:bd] != lead or received.shape[bd + 1 :] != rest:
        raise ValueError(
            f"received must be shaped {(*lead, 'N', *rest)} for own {tuple(own.shape)} and batch_dims={bd}. "
            f"Got {tuple(received.shape)}."
        )
    if mask is not None and tuple(mask.shape) != tuple(received.shape[: bd + 1]):
        raise ValueError(f"mask must be shaped {tuple(received.shape[: bd + 1])}. Got {tuple(mask.shape)}.")


def _slot_weights(
    received: torch.Tensor, mask: torch.Tensor | None, bd: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slot weights ``[*lead, N]`` summing to 1 over N (0 where masked), and the counts ``[*lead]``."""
    m = torch.ones(received.shape[: bd + 1], dtype=torch.float64, device=received.device)
    if mask is not None:
        m = mask.to(dtype=torch.float64, device=received.device)
    count = m.sum(dim=bd)
    return m / count.clamp_min(1.0).unsqueeze(-1), count


def _left(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape + (1,) * (like.dim() - x.dim()))


def _plain64(
    own: torch.Tensor, received: torch.Tensor, w: torch.Tensor, beta: float, bd: int
) -> torch.Tensor:
    r = received.to(torch.float64)
    mean_r = (r * _left(w, r)).sum(dim=bd)
    return beta * own.to(torch.float64) + (1.0 - beta) * mean_r


def _finish(own: torch.Tensor, merged: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Cast back (rounding integers) and keep ``own`` where nothing was received."""
    if not own.is_floating_point():
        merged = merged.round()
    return torch.where(_left(count > 0, merged), merged, own.to(torch.float64)).to(own.dtype)


def plain_average(
    own: torch.Tensor,
    received: torch.Tensor,
    *,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    batch_dims: int = 0,
) -> torch.Tensor:
    """``β·own + (1−β)·mean(received)`` (over the unmasked slots), per merging node."""
    _check_shapes(own, received, mask, batch_dims)
    w, count = _slot_weights(received, mask, batch_dims)
    return _finish(own, _plain64(own, received, w, beta, batch_dims), count)


def corrected_average(
    own: torch.Tensor,
    received: torch.Tensor,
    *,
    beta: float = 0.5,
    eps: float = DEFAULT_EPS,
    mask: torch.Tensor | None = None,
    batch_dims: int = 0,
) -> torch.Tensor:
    """The plain average rescaled about its mean to the received models' mean variance (module docstring)."""
    _check_shapes(own, received, mask, batch_dims)
    bd = batch_dims
    w, count = _slot_weights(received, mask, bd)
    a = _plain64(own, received, w, beta, bd)
    if own.dim() == bd:  # a scalar per node: nothing to rescale
        return _finish(own, a, count)
    axes_a = tuple(range(bd, a.dim()))
    axes_r = tuple(range(bd + 1, received.dim()))
    mean_a = a.mean(dim=axes_a, keepdim=True)
    var_a = a.var(dim=axes_a, correction=0, keepdim=True)
    s2 = (received.to(torch.float64).var(dim=axes_r, correction=0) * w).sum(dim=bd)
    s2 = _left(s2, a)
    denom = var_a + eps
    factor = torch.where(denom > 0, ((s2 + eps) / denom.clamp_min(1e-300)).sqrt(), torch.ones_like(denom))
    return _finish(own, mean_a + (a - mean_a) * factor, count)


def merge_params(
    own: Params,
    received: Params,
    *,
    rule: str = "corrected",
    beta: float = 0.5,
    eps: float = DEFAULT_EPS,
    mask: torch.Tensor | None = None,
    batch_dims: int = 0,
) -> dict[str, torch.Tensor]:
    """Merge every tensor of ``own`` with the stacked ``received`` models by ``rule``; a new dict in own's order.

    Under ``rule="corrected"`` only the tensors :func:`is_corrected` selects are rescaled; the rest take the plain
    average.
    """
    check_merge_args(rule, beta, eps)
    if own.keys() != received.keys():
        raise ValueError(f"received must hold the tensors of own. Got {sorted(received)} for {sorted(own)}.")
    out = {}
    for name, x in own.items():
        if rule == "corrected" and is_corrected(name, x, batch_dims=batch_dims):
            out[name] = corrected_average(
                x, received[name], beta=beta, eps=eps, mask=mask, batch_dims=batch_dims
            )
        else:
            out[name] = plain_average(x, received[name], beta=beta, mask=mask, batch_dims=batch_dims)
    return out


def merge_transform(
    rule: str = "corrected", *, beta: float = 0.5, eps: float = DEFAULT_EPS, batch_dims: int = 0
) -> GradientTransformation:
    """The merge as a gradient-core transform: ``update(received, state, own) -> (merged − own, state)``.

    ``apply_updates(own, updates)`` then gives the merged models (to float rounding). ``received`` is dense (every
    node in the stack received the same number of models); use :func:`merge_params` with a ``mask`` otherwise.
    """
    check_merge_args(rule, beta, eps)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: OptState, params: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[dict[str, torch.Tensor], OptState]:
        if params is None:
            raise ValueError("merge_transform needs the node's own models: pass them as `params` to `update`")
        merged = merge_params(params, updates, rule=rule, beta=beta, eps=eps, batch_dims=batch_dims)
        return {n: merged[n] - params[n] for n in params}, state

    return GradientTransformation(init, update)
