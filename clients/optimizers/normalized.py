"""Stateless normalised-gradient optimizers: SCALE, SWAN and SinkGD, as partitioned gradient-core chains.

Each normalises the current gradient of every weight matrix (``fedsim.gradcore.normalize``) instead of keeping
Adam's moments there, and routes the other parameters by role (``fedsim.gradcore.partition``): ``matrix`` (hidden
weights; 4-D convolution weights are normalised as ``[out, in*kh*kw]`` matrices), ``output`` (the head),
``embedding`` and ``vector`` (biases, norm scales). The learning rate is part of every chain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from clients.optimizers.registry import register
from fedsim.gradcore.adaptive import scale_by_adam
from fedsim.gradcore.base import GradientTransformation, chain
from fedsim.gradcore.momentum import trace
from fedsim.gradcore.normalize import multi_normalize, normalize_axis, whiten_newton_schulz
from fedsim.gradcore.partition import partition
from fedsim.gradcore.scaling import add_decayed_weights, scale, scale_by_learning_rate


def _need_roles(roles: Mapping[str, str] | None, name: str) -> Mapping[str, str]:
    if roles is None:
        raise ValueError(f"{name} needs roles (parameter name -> matrix/output/embedding/vector). Got None.")
    return roles


def _decay(weight_decay: float) -> list[GradientTransformation]:
    return [add_decayed_weights(weight_decay)] if weight_decay else []


def _adam_hat(b1: float, b2: float, eps: float) -> GradientTransformation:
    """Adam with eps outside the raw second moment: ``√(1−β2ᵗ)/(1−β1ᵗ) · m/(√v + eps)`` (the SCALE code's form)."""
    return scale_by_adam(b1, b2, eps, eps_mode="hat")


@register("scale")
def scale_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    adam_lr: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> GradientTransformation:
    """SCALE: column-normalised SGD on matrices, with momentum only on the output layer.

    * ``matrix`` [out, in]: ``U = G / max(RMS over the input dim, 1e-8)``, one scale per output row (the paper's
      "column" in its [in, out] layout); no state.
    * ``embedding`` [vocab, d]: the same with the RMS over dim 0.
    * ``output``: ``m ← momentum·m + (1−momentum)·g`` (an EMA, as the reference code's ``lerp``), then the row rule.
    * ``vector``: AdamW with eps outside the raw second moment (step ``adam_lr·√(1−β2ᵗ)/(1−β1ᵗ)·m/(√v+eps)``);
      ``adam_lr`` defaults to ``lr``.
    * ``weight_decay`` is decoupled (``−lr·wd·θ``) on every group, as in the reference code (default 0).

    Defaults follow the authors' code (OptimAI-Lab/Minimalist_LLM_Pretraining, ``scale_optimizer.py``; lr 1e-3 as
    in its 130M script).

    References:
        Glentis, Li, Han & Hong, "A Minimalist Optimizer Design for LLM Pretraining", 2025, arXiv 2506.16659.
    """
    roles = _need_roles(roles, "scale")
    b1, b2 = betas
    rows = normalize_axis(-1, stat="rms", eps=1e-8, batch_dims=batch_dims)
    cols = normalize_axis(-2, stat="rms", eps=1e-8, batch_dims=batch_dims)
    step = [*_decay(weight_decay), scale_by_learning_rate(lr)]
    adam_step = [*_decay(weight_decay), scale_by_learning_rate(lr if adam_lr is None else adam_lr)]
    return partition(
        {
            "matrix": chain(rows, *step),
            "embedding": chain(cols, *step),
            "output": chain(scale(1.0 - momentum), trace(momentum), rows, *step),
            "vector": chain(_adam_hat(b1, b2, eps), *adam_step),
        },
        roles,
    )


@register("swan")
def swan_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 1e-3,
    ns_steps: int = 10,
    match_norm: bool = True,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """SWAN: stateless GradNorm + GradWhitening on hidden matrices, Adam on everything else.

    * ``matrix`` [m, n]: GradNorm (each row minus its mean, over its population std), then GradWhitening
      ``Δ = (G Gᵀ)^{-1/2} G`` by ``ns_steps`` coupled Newton–Schulz iterations (transposed when m > n).
    * ``output``, ``embedding``, ``vector``: Adam (torch eps placement) at the same ``lr``.

    Choices where the paper does not settle it (documented, not confirmed): (1) output scaling: with
    ``match_norm=True`` (default) Δ is rescaled to the Frobenius norm of the GradNorm output, i.e. by
    ``√max(m, n)`` for a full-rank gradient, so each entry has unit RMS and one ``lr`` (default 1e-3, Adam's)
    serves both groups; ``match_norm=False`` steps with the raw polar factor. (2) The head and embeddings use Adam,
    as in the paper's LLaMA setup where only attention/MLP linear layers get SWAN. Note GradNorm maps a matrix
    with one input column to zero (its row std is 0).

    References:
        Ma, Gong, Scetbon & Meeds, "SWAN: SGD with Normalization and Whitening Enables Stateless LLM Training",
        ICML 2025, arXiv 2412.13148.
    """
    roles = _need_roles(roles, "swan")
    b1, b2 = betas
    step = [*_decay(weight_decay), scale_by_learning_rate(lr)]
    matrix = chain(
        normalize_axis(-1, stat="std", center=True, batch_dims=batch_dims),
        whiten_newton_schulz(ns_steps, match_norm=match_norm, batch_dims=batch_dims),
        *step,
    )
    adam = chain(scale_by_adam(b1, b2, eps), *step)
    return partition({"matrix": matrix, "output": adam, "embedding": adam, "vector": adam}, roles)


@register("sinkgd")
def sinkgd_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 0.02,
    matrix_lr_scale: float = 0.05,
    rounds: int = 5,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """SinkGD: stateless Sinkhorn multi-normalisation on hidden matrices, AdamW on everything else.

    * ``matrix`` [m, n]: ``rounds`` (L = 5) of rows to L2 ``√n`` then columns to L2 ``√m``; step
      ``lr · matrix_lr_scale`` (0.05).
    * ``output``, ``embedding``, ``vector``: AdamW (torch eps placement) at ``lr``.
    * ``weight_decay`` decoupled on every group at its own rate (default 0).

    The split (embeddings, head and vectors on AdamW) and the defaults (global lr 0.02, matrix scale 0.05, L = 5)
    are the paper's reported practice as reproduced by public re-implementations; not re-derived here.

    References:
        Scetbon, Ma, Gong & Meeds, "Gradient Multi-Normalization for Stateless and Scalable LLM Training", 2025,
        arXiv 2502.06742.
    """
    roles = _need_roles(roles, "sinkgd")
    if not (
        isinstance(matrix_lr_scale, (int, float)) and math.isfinite(matrix_lr_scale) and matrix_lr_scale > 0
    ):
        raise ValueError(f"matrix_lr_scale must be a finite number > 0. Got {matrix_lr_scale!r}.")
    b1, b2 = betas
    matrix = chain(
        multi_normalize(rounds, batch_dims=batch_dims),
        *_decay(weight_decay),
        scale_by_learning_rate(lr * matrix_lr_scale),
    )
    adamw = chain(scale_by_adam(b1, b2, eps), *_decay(weight_decay), scale_by_learning_rate(lr))
    return partition({"matrix": matrix, "output": adamw, "embedding": adamw, "vector": adamw}, roles)
