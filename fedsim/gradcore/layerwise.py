"""Per-layer and per-group step control: Fira's norm-growth limiter, AGVM group factors, LANTON layer rates.

Why this module exists: these three methods all decide *how far* each layer (or group of layers) may move from a
per-tensor statistic, on top of an unchanged direction (Adam, momentum SGD, an LMO step). Each statistic is a
reduction over one tensor's (or one group's) trailing axes, so every function here takes ``batch_dims``: with
``batch_dims=1`` the tensors are ``[K, *shape]`` and every norm, cosine and factor is computed once per client
(shape ``[K]``), never across clients.

* ``norm_growth_limit`` (Fira): the update norm of each tensor may grow by at most a factor ``gamma`` a step.
* ``scale_by_group_factor`` (AGVM): each module group's step is multiplied by a factor that aligns the group's
  gradient variance (measured as 1 - cosine of two gradient samples) with the backbone's (group 0).
* ``scale_by_lanton`` (LANTON): a momentum + LMO step (orthogonalised / sign / RMS-normalised) whose per-layer
  rate within each LMO group shrinks with an online estimate of that layer's gradient noise in the LMO's dual norm.

References:
    Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?", arXiv 2410.01623,
    2024; Xie et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022, arXiv 2210.11078;
    Hao et al., "Noise-Adaptive Layerwise Learning Rates: Accelerating Geometry-Aware Optimization for Deep
    Neural Network Training", arXiv 2510.14009, 2025.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from fedsim.gradcore.base import (
    GradientTransformation,
    OptState,
    Params,
    Updates,
    expand_left,
    init_count,
    tree_map,
    zeros_like,
)
from fedsim.gradcore.layers import tensor_norm

# --------------------------------------------------------------------------------------------------------------
# Shared reductions (trailing axes only)
# --------------------------------------------------------------------------------------------------------------


def _trailing(x: torch.Tensor, batch_dims: int) -> tuple[int, ...]:
    """The axes of ``x`` after its first ``batch_dims`` (the per-client axes)."""
    if x.dim() < batch_dims:
        raise ValueError(f"tensors must have at least {batch_dims} axes. Got shape {tuple(x.shape)}.")
    return tuple(range(batch_dims, x.dim()))


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32 (reductions of half-precision tensors lose too much)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _per_client_zeros(p: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """A zero statistic per client (shape ``p.shape[:batch_dims]``) in at least float32."""
    return torch.zeros(
        p.shape[:batch_dims], dtype=torch.promote_types(p.dtype, torch.float32), device=p.device
    )


# --------------------------------------------------------------------------------------------------------------
# Fira: norm-growth limiter
# --------------------------------------------------------------------------------------------------------------


class NormGrowthLimitState(NamedTuple):
    """Step count and, per tensor, the norm of the previous (limited) update (``[]`` or ``[K]``)."""

    count: torch.Tensor
    norm: dict[str, torch.Tensor]


def norm_growth_limit(
    gamma: float = 1.01, *, eps: float = 1e-8, batch_dims: int = 0
) -> GradientTransformation:
    """Fira's limiter: per tensor, ``S_t <- S_t / lam`` with ``lam = max(||S_t|| / (r + eps), gamma) / gamma``.

    ``r`` is the norm of the previous output (after limiting); the first update passes unchanged and only records
    ``r``. The norm may therefore grow by at most ``gamma`` per step and shrink freely; a zero update stays zero.
    Norms are per tensor and, with ``batch_dims=1``, per client.

    Raises:
        ValueError: if ``gamma`` is not a number >= 1.

    References:
        Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?", arXiv
        2410.01623, 2024 (Sec. 4.2, "norm-growth limiter"; code xichen-fy/Fira, ``scaling_grad``).
    """
    if not float(gamma) >= 1.0:
        raise ValueError(f"gamma must be a number >= 1. Got {gamma!r}.")

    def init(params: Params) -> NormGrowthLimitState:
        norms = {n: _per_client_zeros(p, batch_dims) for n, p in params.items()}
        return NormGrowthLimitState(count=init_count(params), norm=norms)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], NormGrowthLimitState]:
        del params
        first = state.count == 0
        out, norms = {}, {}
        for name, s in updates.items():
            norm = tensor_norm(s, batch_dims=batch_dims, keepdim=False)
            lam = torch.clamp(norm / (state.norm[name] + eps), min=gamma) / gamma
            lam = torch.where(first, torch.ones_like(lam), lam)
            out[name] = s / expand_left(lam, s)
            norms[name] = norm / lam
        return out, NormGrowthLimitState(count=state.count + 1, norm=norms)

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------------------------
# AGVM: group factors from two gradient samples
# --------------------------------------------------------------------------------------------------------------


class HalfBatchGrads(dict):
    """The mean gradient of a batch (the mapping's items) carrying its two half-batch gradients in ``halves``.

    Build it with ``split_grads(g_a, g_b)`` and give it to a ``scale_by_group_factor`` transform (outermost, since
    ``chain`` passes plain dicts on) to refresh AGVM's factors from the two halves.
    """

    halves: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def split_grads(g_a: Updates, g_b: Updates) -> HalfBatchGrads:
    """The full-batch gradient ``(g_a + g_b) / 2`` of two equal half batches, with both halves attached.

    References:
        Xie et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022, arXiv 2210.11078.
    """
    out = HalfBatchGrads(tree_map(lambda a, b: (a + b) / 2, g_a, g_b))
    out.halves = (dict(g_a), dict(g_b))
    return out


def group_cosine_distance(
    g_a: Updates, g_b: Updates, groups: Mapping[str, int], *, batch_dims: int = 0
) -> dict[int, torch.Tensor]:
    """AGVM's gradient variance per group: ``Phi_k = 1 - cos(g_a,k, g_b,k)``, each group's tensors concatenated.

    Returns:
        Group id -> ``Phi_k`` of shape ``[]`` (or ``[K]`` per client with ``batch_dims=1``). A group whose
        gradients are zero has cosine 0 (``Phi_k = 1``), as ``torch.cosine_similarity`` gives.

    References:
        Xie et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022, arXiv 2210.11078
        (Eq. 4; code Sense-X/AGVM ``agvm_optimizer_hook.py``).
    """
    dot: dict[int, torch.Tensor] = {}
    sq_a: dict[int, torch.Tensor] = {}
    sq_b: dict[int, torch.Tensor] = {}
    for name, a in g_a.items():
        k, b, axes = groups[name], _wide(g_b[name]), _trailing(a, batch_dims)
        a = _wide(a)
        terms = (a * b, a * a, b * b)
        terms = tuple(t.sum(dim=axes) if axes else t for t in terms)
        for acc, term in zip((dot, sq_a, sq_b), terms, strict=True):
            acc[k] = acc[k] + term if k in acc else term
    return {k: 1.0 - dot[k] / torch.clamp(torch.sqrt(sq_a[k] * sq_b[k]), min=1e-8) for k in sorted(dot)}


def agvm_factors(
    phi: Mapping[int, torch.Tensor], *, eps: float = 1e-6, lower: float = 0.5, upper: float = 10.0
) -> dict[int, torch.Tensor]:
    """``mu_k = sqrt(clamp((Phi_0 + eps) / (Phi_k + eps), lower, upper))``; group 0's is exactly 1.

    References:
        Xie et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022, arXiv 2210.11078
        (Eq. 5; code Sense-X/AGVM).
    """
    if 0 not in phi:
        raise ValueError(f"AGVM needs group 0 (the backbone) as reference. Got groups {sorted(phi)}.")
    ref = phi[0] + eps
    return {k: torch.sqrt(torch.clamp(ref / (p + eps), lower, upper)) for k, p in phi.items()}


class GroupFactorState(NamedTuple):
    """Step count, the factor ``s`` per group (last axis, groups in sorted id order), the previous gradient
    (consecutive-sample mode; else empty) and the wrapped transform's state."""

    count: torch.Tensor
    scale: torch.Tensor
    prev: dict[str, torch.Tensor]
    inner: OptState


def scale_by_group_factor(
    inner: GradientTransformation,
    groups: Mapping[str, int],
    *,
    every: int = 5,
    start: int = 500,
    stop: int | None = None,
    ema: float = 0.97,
    consecutive: bool = True,
    batch_dims: int = 0,
) -> GradientTransformation:
    """AGVM: run ``inner`` (momentum, lr) on the gradient and multiply group ``k``'s output by its factor ``s_k``.

    On refresh steps (0-based step ``t`` with ``start <= t <= stop`` and ``t % every == 0``) the factors move
    ``s_k <- ema * s_k + (1 - ema) * mu_k`` (``agvm_factors`` of ``group_cosine_distance``), before the step, as
    in the authors' hook; ``s_k`` starts at 1 and group 0's stays exactly 1. The two gradient samples are

    * the two half-batch gradients when ``updates`` is a ``HalfBatchGrads`` (``split_grads(g_a, g_b)``; then the
      step uses their mean). This is the paper's estimator; the transform must be outermost to see them.
    * otherwise, when ``consecutive`` is true, the previous and the current step's gradient (an approximation for
      a plain ``optimizer.step()``: consecutive minibatches are independent samples, but the parameters moved
      between them, which adds the curvature drift to ``Phi_k``; step 0 never refreshes). One gradient copy is kept.
    * otherwise no refresh happens on that step.

    Raises:
        ValueError: a group without id 0, or non-positive ``every``.

    References:
        Xie et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022, arXiv 2210.11078
        (Alg. 1; code Sense-X/AGVM ``AgvmOptimizerHook``: interval 5, start 500, momentum 0.97, clamp [0.5, 10]).
    """
    ids = sorted(set(groups.values()))
    if not ids or ids[0] != 0:
        raise ValueError(f"groups must include group 0 (the backbone). Got group ids {ids}.")
    if every < 1:
        raise ValueError(f"every must be an integer >= 1. Got {every!r}.")
    column = {k: i for i, k in enumerate(ids)}
    last = float("inf") if stop is None else stop

    def init(params: Params) -> GroupFactorState:
        like = next(iter(params.values()))
        scale = torch.ones(
            (*like.shape[:batch_dims], len(ids)),
            dtype=torch.promote_types(like.dtype, torch.float32),
            device=like.device,
        )
        prev = zeros_like(params) if consecutive else {}
        return GroupFactorState(init_count(params), scale, prev, inner.init(params))

    def refreshed(updates: Updates, state: GroupFactorState) -> torch.Tensor:
        if isinstance(updates, HalfBatchGrads):
            (g_a, g_b), ok = updates.halves, torch.ones((), dtype=torch.bool, device=state.count.device)
        elif consecutive:
            (g_a, g_b), ok = (state.prev, updates), state.count >= 1
        else:
            return state.scale
        mu = agvm_factors(group_cosine_distance(g_a, g_b, groups, batch_dims=batch_dims))
        mu_all = torch.stack([mu[k].to(state.scale.dtype) for k in ids], dim=-1)
        t = state.count
        due = ok & (t >= start) & (t <= last) & (t % every == 0)
        # s + (1 - ema)(mu - s): exactly s when mu == s (group 0 stays exactly 1)
        moved = state.scale + (1.0 - ema) * (mu_all - state.scale)
        return torch.where(expand_left(due, moved).bool(), moved, state.scale)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], GroupFactorState]:
        scale = refreshed(updates, state)
        out, inner_state = inner.update(dict(updates), state.inner, params)
        out = {n: u * expand_left(scale[..., column[groups[n]]], u) for n, u in out.items()}
        prev = {n: g.detach().clone() for n, g in updates.items()} if consecutive else {}
        return out, GroupFactorState(state.count + 1, scale, prev, inner_state)

    return GradientTransformation(init, update)


def agvm_groups(roles: Mapping[str, str], head: Mapping[str, int] | None = None) -> dict[str, int]:
    """AGVM module groups from parameter roles: group 1 = the output layer (its weight and every parameter of the
    same module, e.g. ``"2.weight"`` and ``"2.bias"``), group 0 = everything else (the backbone). ``head`` maps
    further names to group ids (overriding the default).

    References:
        Xie et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022, arXiv 2210.11078.
    """
    prefixes = {n.rsplit(".", 1)[0] for n, r in roles.items() if r == "output" and "." in n}
    out = {
        n: 1 if r == "output" or (("." in n) and n.rsplit(".", 1)[0] in prefixes) else 0
        for n, r in roles.items()
    }
    out.update(head or {})
    return out


# --------------------------------------------------------------------------------------------------------------
# LANTON: noise-adaptive layerwise rates on an LMO step
# --------------------------------------------------------------------------------------------------------------

LMO_OF_ROLE = {"matrix": "spectral", "embedding": "sign", "output": "sign", "vector": "rms"}
"""The LMO (and so the group) of each parameter role: hidden matrices spectral-norm ball (orthogonalised step),
embedding and head l-infinity ball (sign step), vectors RMS ball (RMS-normalised step)."""

_NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Jordan et al.'s quintic Newton-Schulz (Muon)


def _as_matrices(x: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """View each per-client tensor ``[out, *rest]`` as a matrix ``[out, prod(rest)]``."""
    lead = x.shape[:batch_dims]
    return x.reshape(*lead, x.shape[batch_dims], -1)


def orthogonalize(x: torch.Tensor, *, steps: int = 5, batch_dims: int = 0) -> torch.Tensor:
    """Muon's quintic Newton-Schulz approximation of the polar factor ``U V^T`` of each trailing matrix.

    Singular values land in roughly [0.7, 1.2] after 5 steps (by design of the coefficients); a zero matrix stays
    zero. Tensors with more than two trailing axes (convolutions) are flattened to ``[out, -1]``.

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024
        (kellerjordan.github.io/posts/muon); Bernstein & Newhouse, "Old Optimizer, New Norm", arXiv 2409.20325.
    """
    a, b, c = _NS_COEFFS
    m = _as_matrices(_wide(x), batch_dims)
    tall = m.shape[-2] > m.shape[-1]
    if tall:
        m = m.transpose(-2, -1)
    m = m / (torch.linalg.matrix_norm(m, keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = m @ m.transpose(-2, -1)
        m = a * m + (b * gram + c * gram @ gram) @ m
    if tall:
        m = m.transpose(-2, -1)
    return m.reshape(x.shape).to(x.dtype)


def lmo_direction(x: torch.Tensor, kind: str, *, ns_steps: int = 5, batch_dims: int = 0) -> torch.Tensor:
    """``d = argmax_{||d|| <= 1} <x, d>`` for the LMO's norm (the LMO answers ``-d``; ``-lr`` supplies the sign).

    ``spectral``: ``orthogonalize(x)``; ``sign``: ``sign(x)``; ``rms``: ``x / RMS(x)`` (zero stays zero).

    References:
        Pethick et al., "Training Deep Learning Models with Norm-Constrained LMOs", arXiv 2502.07529, 2025.
    """
    if kind == "spectral":
        return orthogonalize(x, steps=ns_steps, batch_dims=batch_dims)
    if kind == "sign":
        return torch.sign(x)
    if kind == "rms":
        axes = _trailing(x, batch_dims)
        n = max(1, x[(0,) * batch_dims].numel())
        rms = tensor_norm(x, batch_dims=batch_dims, keepdim=False) / n**0.5 if axes else _wide(x).abs()
        return x / expand_left(torch.clamp(rms, min=1e-12), x)
    raise ValueError(f"kind must be one of spectral, sign, rms. Got {kind!r}.")


def dual_norm(x: torch.Tensor, kind: str, *, batch_dims: int = 0) -> torch.Tensor:
    """The dual of the LMO's norm: nuclear (spectral LMO), l1 (sign), ``sqrt(n) * l2`` (RMS), per client.

    References:
        Hao et al., "Noise-Adaptive Layerwise Learning Rates", arXiv 2510.14009, 2025 (noise measured in the dual
        norm induced by the LMO).
    """
    axes = _trailing(x, batch_dims)
    if kind == "spectral":
        return torch.linalg.svdvals(_as_matrices(_wide(x), batch_dims)).sum(dim=-1)
    if kind == "sign":
        return _wide(x).abs().sum(dim=axes) if axes else _wide(x).abs()
    if kind == "rms":
        n = max(1, x[(0,) * batch_dims].numel())
        return tensor_norm(x, batch_dims=batch_dims, keepdim=False) * n**0.5
    raise ValueError(f"kind must be one of spectral, sign, rms. Got {kind!r}.")


def noise_adaptive_factors(
    noise: Mapping[str, torch.Tensor], groups: Mapping[str, str], *, eps: float = 1e-12
) -> dict[str, torch.Tensor]:
    """Per-layer scalar rate factors ``sqrt((min_{j in group} H_j + eps) / (H_l + eps))``, in (0, 1].

    The quietest layer of each group runs at the group's base rate; a layer with ``c`` times its noise variance
    at ``1/sqrt(c)`` of it. Factors are per client (``[K]``) when the estimates are.

    References:
        Hao et al., "Noise-Adaptive Layerwise Learning Rates", arXiv 2510.14009, 2025 (the 1/sqrt(noise) scaling
        within a group is this implementation's reading, see ``scale_by_lanton``).
    """
    floor: dict[str, torch.Tensor] = {}
    for name, h in noise.items():
        g = groups[name]
        floor[g] = h if g not in floor else torch.minimum(floor[g], h)
    return {name: torch.sqrt((floor[groups[name]] + eps) / (h + eps)) for name, h in noise.items()}


class LantonState(NamedTuple):
    """Step count, momentum ``B`` per tensor, and per layer the EMA ``H`` of its squared dual-norm noise."""

    count: torch.Tensor
    momentum: dict[str, torch.Tensor]
    noise: dict[str, torch.Tensor]


def scale_by_lanton(
    kinds: Mapping[str, str],
    *,
    b1: float = 0.9,
    b2: float = 0.99,
    ns_steps: int = 5,
    eps: float = 1e-12,
    batch_dims: int = 0,
) -> GradientTransformation:
    """Momentum + LMO direction with noise-adaptive per-layer factors within each LMO group (learning rate apart).

    Per layer ``l`` (one tensor) with LMO ``kinds[l]`` (``spectral`` / ``sign`` / ``rms``; the group is the kind):

    1. ``B_l <- b1 B_l + (1 - b1) G_l`` (momentum);
    2. from step 2 on, ``H_l <- b2 H_l + (1 - b2) ||G_l - B_l(prev)||_*^2`` with ``||.||_*`` the LMO's dual norm
       (``dual_norm``): the deviation of the fresh gradient from the running mean as a one-sample noise estimate;
    3. output ``f_l * LMO(B_l)`` with ``f_l = noise_adaptive_factors(H)`` (scalars; noisier layer -> smaller).

    What is the paper's and what is not: LANTON (arXiv 2510.14009) is a momentum LMO method (Muon/Scion-style
    groups) that estimates each layer's gradient noise in the dual norm of its LMO online and scales each layer's
    rate within its group by it; that much is from the paper's abstract and Sec. 4. The exact estimator in step 2
    (``G - B_prev``, squared dual norm, EMA ``b2``), the factor form ``sqrt(min H / H_l)`` in step 3, the unit LMO
    radii (no Muon shape factor), and the defaults ``b1 = 0.9``, ``b2 = 0.99`` are this implementation's reading:
    the paper's Algorithm 1 could not be consulted, so they are not confirmed. Any correct form keeps the tested
    invariants (scalar factors, noisier layer -> smaller factor within a group).

    References:
        Hao et al., "Noise-Adaptive Layerwise Learning Rates: Accelerating Geometry-Aware Optimization for Deep
        Neural Network Training", arXiv 2510.14009, 2025; Pethick et al., "Training Deep Learning Models with
        Norm-Constrained LMOs", arXiv 2502.07529, 2025.
    """
    for name, kind in kinds.items():
        if kind not in ("spectral", "sign", "rms"):
            raise ValueError(f"kinds[{name!r}] must be one of spectral, sign, rms. Got {kind!r}.")

    def init(params: Params) -> LantonState:
        noise = {n: _per_client_zeros(p, batch_dims) for n, p in params.items()}
        return LantonState(count=init_count(params), momentum=zeros_like(params), noise=noise)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], LantonState]:
        del params
        seen = state.count >= 1
        noise = {}
        for n, g in updates.items():
            sample = dual_norm(g - state.momentum[n], kinds[n], batch_dims=batch_dims).square()
            noise[n] = torch.where(seen, b2 * state.noise[n] + (1.0 - b2) * sample, state.noise[n])
        momentum = tree_map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.momentum)
        factors = noise_adaptive_factors(noise, kinds, eps=eps)
        out = {
            n: lmo_direction(m, kinds[n], ns_steps=ns_steps, batch_dims=batch_dims)
            * expand_left(factors[n], m).to(m.dtype)
            for n, m in momentum.items()
        }
        return out, LantonState(count=state.count + 1, momentum=momentum, noise=noise)

    return GradientTransformation(init, update)
