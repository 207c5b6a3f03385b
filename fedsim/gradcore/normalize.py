"""Normalising gradient matrices: per-axis scaling, Newton–Schulz whitening and Sinkhorn multi-normalisation.

Why this module exists: the stateless optimizers SCALE, SWAN and SinkGD replace Adam's moments by a normalisation of
each weight matrix's current gradient. These are the three building blocks, each a stateless transform that the
optimizer chains in ``clients.optimizers.normalized`` route to matrices with ``partition``.

Matrix view: with ``batch_dims`` leading client dimensions, a tensor ``[*K, d0, d1, ...]`` is treated as the matrix
``[*K, d0, d1*...]`` (a 4-D convolution weight ``[out, in, kh, kw]`` becomes ``[out, in*kh*kw]``, as in the SCALE
reference code), and a 1-D tensor ``[*K, n]`` as the row ``[*K, 1, n]``. Axes count from the end of that view:
``-1`` is the input dimension (one statistic per output row), ``-2`` the output dimension (one per input column).
Every reduction and matrix product acts on the two trailing axes only, once per client, in at least float32; the
result is returned in the input's dtype and shape.
"""

from __future__ import annotations

import math

import torch

from fedsim.gradcore.base import GradientTransformation, Params, Updates, stateless, tree_map

STATS = ("rms", "l2", "std")


def as_matrix(x: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """View ``x`` as ``[*lead, rows, cols]`` (see the module docstring), computed in at least float32.

    Raises:
        ValueError: if ``x`` has no axis after its ``batch_dims`` leading ones.
    """
    lead, rest = x.shape[:batch_dims], x.shape[batch_dims:]
    if len(rest) == 0:
        raise ValueError(
            f"tensor must have an axis after {batch_dims} client axes. Got shape {tuple(x.shape)}."
        )
    rows = rest[0] if len(rest) > 1 else 1
    return x.to(torch.promote_types(x.dtype, torch.float32)).reshape(*lead, rows, -1)


def _rescale(x: torch.Tensor, axis: int, stat: str, center: bool, target: float, eps: float) -> torch.Tensor:
    """``(x - mean if center) * target / max(stat, eps)`` along ``axis`` of a matrix view."""
    if center:
        x = x - x.mean(dim=axis, keepdim=True)
    if stat == "l2":
        s = torch.linalg.vector_norm(x, dim=axis, keepdim=True)
    elif stat == "rms":
        s = x.square().mean(dim=axis, keepdim=True).sqrt()
    else:  # population standard deviation
        s = x.var(dim=axis, keepdim=True, correction=0).sqrt()
    return x * (target / s.clamp_min(eps))


def normalize_axis(
    axis: int = -1,
    *,
    stat: str = "rms",
    center: bool = False,
    target: float = 1.0,
    eps: float = 1e-8,
    batch_dims: int = 0,
) -> GradientTransformation:
    """Scale each row (``axis=-1``) or column (``axis=-2``) of every gradient matrix to ``stat == target``.

    ``stat`` is ``rms`` (root mean square), ``l2`` (Euclidean norm) or ``std`` (population standard deviation);
    ``center`` first subtracts the mean along ``axis``. The divisor is ``max(stat, eps)``, so a zero row stays zero.
    SCALE uses ``rms`` along the input dimension (``axis=-1``, embeddings ``axis=-2``); SWAN's GradNorm is
    ``stat="std", center=True`` along ``axis=-1``.

    Raises:
        ValueError: for an unknown ``stat``, an ``axis`` other than -1 / -2, or a non-positive ``target``.

    References:
        Glentis et al., "A Minimalist Optimizer Design for LLM Pretraining", 2025, arXiv 2506.16659;
        Ma et al., "SWAN: SGD with Normalization and Whitening Enables Stateless LLM Training", ICML 2025,
        arXiv 2412.13148.
    """
    if stat not in STATS:
        raise ValueError(f"stat must be one of {', '.join(STATS)}. Got {stat!r}.")
    if axis not in (-1, -2):
        raise ValueError(f"axis must be -1 (rows) or -2 (columns) of the matrix view. Got {axis!r}.")
    if not target > 0:
        raise ValueError(f"target must be > 0. Got {target!r}.")

    def one(g: torch.Tensor) -> torch.Tensor:
        out = _rescale(as_matrix(g, batch_dims), axis, stat, center, target, eps)
        return out.reshape(g.shape).to(g.dtype)

    return stateless(lambda updates, params: tree_map(one, updates))


def polar_newton_schulz(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``(X Xᵀ)^{-1/2} X`` for a batch of matrices ``[..., m, n]`` by coupled Newton–Schulz (``Xᵀ`` when m > n).

    With ``A = X Xᵀ``: ``Y₀ = A/‖A‖_F``, ``Z₀ = I``, then ``T = ½(3I − Z Y)``, ``Y ← Y T``, ``Z ← T Z``; ``Z`` tends
    to ``(A/‖A‖_F)^{-1/2}`` and the result is ``Z X / √‖A‖_F``. A zero matrix maps to zero.
    """
    tall = x.shape[-2] > x.shape[-1]
    g = x.mT if tall else x
    a = g @ g.mT
    norm = torch.linalg.matrix_norm(a).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a / norm, eye
    for _ in range(steps):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    out = (z @ g) / norm.sqrt()
    return out.mT if tall else out


def whiten_newton_schulz(
    steps: int = 10, *, match_norm: bool = False, batch_dims: int = 0
) -> GradientTransformation:
    """Whiten every gradient matrix: ``Δ = (G Gᵀ)^{-1/2} G`` (the polar factor ``U Vᵀ``), by coupled Newton–Schulz.

    ``steps`` iterations of ``polar_newton_schulz`` (5 give ~1e-5 on well-conditioned matrices, 10 give machine
    precision). ``match_norm=True`` rescales ``Δ`` to the Frobenius norm of its input (for a full-rank row-standardised
    ``[m, n]`` gradient that is ``√max(m, n)``), so the update's entries have unit RMS like Adam's.

    Raises:
        ValueError: if ``steps`` is not a positive integer.

    References:
        Ma et al., "SWAN: SGD with Normalization and Whitening Enables Stateless LLM Training", ICML 2025,
        arXiv 2412.13148 (GradWhitening); Higham, "Functions of Matrices", SIAM 2008, §6.7 (coupled Newton–Schulz).
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive integer. Got {steps!r}.")

    def one(g: torch.Tensor) -> torch.Tensor:
        x = as_matrix(g, batch_dims)
        out = polar_newton_schulz(x, steps)
        if match_norm:
            tiny = torch.finfo(out.dtype).tiny
            ratio = torch.linalg.matrix_norm(x) / torch.linalg.matrix_norm(out).clamp_min(tiny)
            out = out * ratio[..., None, None]
        return out.reshape(g.shape).to(g.dtype)

    return stateless(lambda updates, params: tree_map(one, updates))


def sinkhorn_normalize(x: torch.Tensor, rounds: int, eps: float = 1e-8) -> torch.Tensor:
    """``rounds`` times: rows of ``x [..., m, n]`` to L2 norm ``√n``, then columns to L2 norm ``√m``."""
    m, n = x.shape[-2], x.shape[-1]
    for _ in range(rounds):
        x = _rescale(x, -1, "l2", False, math.sqrt(n), eps)
        x = _rescale(x, -2, "l2", False, math.sqrt(m), eps)
    return x


def multi_normalize(rounds: int = 5, *, eps: float = 1e-8, batch_dims: int = 0) -> GradientTransformation:
    """SinkGD's multi-normalisation: alternately scale each matrix's rows to L2 ``√n`` and columns to L2 ``√m``.

    After the last round the columns have norm exactly ``√m`` and the rows approximately ``√n`` (the
    square-root Sinkhorn fixed point); the Frobenius norm is ``√(mn)``.

    Raises:
        ValueError: if ``rounds`` is not a positive integer.

    References:
        Scetbon, Ma, Gong & Meeds, "Gradient Multi-Normalization for Stateless and Scalable LLM Training", 2025,
        arXiv 2502.06742 (Algorithm 3, SR-Sinkhorn).
    """
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds must be a positive integer. Got {rounds!r}.")

    def fn(updates: Updates, params: Params | None) -> dict[str, torch.Tensor]:
        del params
        return tree_map(
            lambda g: sinkhorn_normalize(as_matrix(g, batch_dims), rounds, eps).reshape(g.shape).to(g.dtype),
            updates,
        )

    return stateless(fn)
