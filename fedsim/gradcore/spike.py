"""Transforms against gradient spikes and stale moments: diffGrad's friction, SPAM, Stable-SPAM.

Why this module exists: diffGrad damps an Adam step where the gradient barely changed; SPAM clips gradient spikes
against Adam's second moment and resets the moments periodically (with a warm-up after each reset); Stable-SPAM
clips each tensor at a running maximum and rescales it by running statistics of its norm. Those are small pieces
that the ``clients.optimizers.spam`` chains compose; each mirrors ``pytorch_optimizer`` 4.1.0 step for step (the
oracle the tests compare against), including where it puts ``eps`` and which counters a reset restarts.

Spike clipping reads Adam's own second moment, so it lives inside ``scale_by_adam_with_resets`` (``spike_clip`` is
the tensor rule). Per-tensor statistics (running max, norm EMAs) are per client when ``batch_dims=1``: the
reductions run over the trailing axes only and the statistics have shape ``[K]``. Step counters are scalars.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from fedsim.gradcore.base import (
    NO_PARAMS_MSG,
    GradientTransformation,
    OptState,
    Params,
    Updates,
    expand_left,
    init_count,
    stateless,
    tree_map,
    zeros_like,
)


class DifferenceState(NamedTuple):
    """The previous step's input (zero before the first step)."""

    previous: dict[str, torch.Tensor]


class ScaleByDiffGradState(NamedTuple):
    """The previous gradient and the wrapped transform's state."""

    difference: DifferenceState
    inner: OptState


class AdamWithResetsState(NamedTuple):
    """Steps taken, the bias-correction count (restarted by a reset if asked), and the moments."""

    count: torch.Tensor
    moment_count: torch.Tensor
    mu: dict[str, torch.Tensor]
    nu: dict[str, torch.Tensor]


class ResetWarmupState(NamedTuple):
    """Steps taken, and steps since the last reset (``warmup_steps + 1`` before the first: no warm-up)."""

    count: torch.Tensor
    since_reset: torch.Tensor


class RunningMaxState(NamedTuple):
    """Steps taken and, per tensor (per client), the EMA of its largest ``|g|``."""

    count: torch.Tensor
    max_abs: dict[str, torch.Tensor]


class NormEmaState(NamedTuple):
    """Steps taken and, per tensor (per client), EMAs of its L2 norm and squared norm."""

    count: torch.Tensor
    m_norm: dict[str, torch.Tensor]
    v_norm: dict[str, torch.Tensor]


def _where(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """``torch.where`` with a ``[]`` / ``[K]`` condition broadcast from the left against ``a``."""
    return torch.where(cond.reshape(cond.shape + (1,) * (a.dim() - cond.dim())), a, b)


def _axes(x: torch.Tensor, batch_dims: int) -> tuple[int, ...]:
    """The per-tensor axes of ``x``: all after the first ``batch_dims``."""
    return tuple(range(batch_dims, x.dim()))


def _per_tensor(params: Params, batch_dims: int) -> dict[str, torch.Tensor]:
    """One zero statistic per tensor (shape ``[]``, or the leading client shape)."""
    return {n: torch.zeros(p.shape[:batch_dims], dtype=p.dtype, device=p.device) for n, p in params.items()}


def difference() -> GradientTransformation:
    """Return ``g_t - g_{t-1}`` (with ``g_0 = 0``): the change of the input since the previous step.

    References:
        Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks", IEEE TNNLS 2020,
        arXiv 1909.11015.
    """

    def init(params: Params) -> DifferenceState:
        return DifferenceState(previous=zeros_like(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], DifferenceState]:
        del params
        out = tree_map(lambda g, prev: g - prev, updates, state.previous)
        return out, DifferenceState(previous=dict(updates))

    return GradientTransformation(init, update)


def scale_by_diffgrad(inner: GradientTransformation) -> GradientTransformation:
    """diffGrad's friction: ``inner(g)`` times ``ξ = sigmoid(|g_{t-1} - g_t|)`` element-wise (``g_0 = 0``).

    ``ξ`` is in ``[0.5, 1)``: the step of ``inner`` (Adam in diffGrad) is halved where the gradient did not change
    and kept where it changed a lot.

    References:
        Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks", IEEE TNNLS 2020,
        arXiv 1909.11015.
    """
    diff = difference()

    def init(params: Params) -> ScaleByDiffGradState:
        return ScaleByDiffGradState(difference=diff.init(params), inner=inner.init(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], ScaleByDiffGradState]:
        change, diff_state = diff.update(updates, state.difference, params)
        out, inner_state = inner.update(updates, state.inner, params)
        out = tree_map(lambda u, d: torch.sigmoid(d.abs()) * u, out, change)
        return out, ScaleByDiffGradState(difference=diff_state, inner=inner_state)

    return GradientTransformation(init, update)


def spike_clip(g: torch.Tensor, v: torch.Tensor, threshold: float) -> torch.Tensor:
    """SPAM's spike rule on one tensor: where ``g² > θ·v`` return ``sign(g)·√(θ·v)``, elsewhere ``g``.

    References:
        Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR 2025,
        arXiv 2501.06842.
    """
    limit = v * threshold
    return torch.where(g * g > limit, torch.sign(g) * torch.sqrt(limit), g)


def scale_by_adam_with_resets(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    *,
    eps_root: float = 0.0,
    eps_placement: str = "hat",
    reset_every: int = 0,
    restart_count: bool = False,
    spike_threshold: float = 0.0,
    spike_start: int = 20,
    skip_zero: bool = False,
    batch_dims: int = 0,
) -> GradientTransformation:
    """Adam's preconditioner with periodic moment resets and SPAM's spike clipping.

    At step ``t`` (from 1): if ``reset_every`` and ``t % reset_every == 0``, ``m = v = 0`` first, and the
    bias-correction count ``k`` restarts at 1 when ``restart_count`` (Stable-SPAM) or keeps counting (SPAM; else
    ``k = t``). With ``spike_threshold`` θ > 0, when ``t >= spike_start`` and ``t % reset_every >= spike_start``,
    ``g`` is first ``spike_clip``-ped against the previous ``v``. Then ``m = lerp(m, g, 1-b1)``,
    ``v = b2 v + (1-b2) g²``, and the output is, with ``eps_placement="hat"``,
    ``m √(1-b2^k) / ((1-b1^k)(√(v+eps_root)+eps))`` (SPAM, diffGrad), with ``"torch"``
    ``m / ((1-b1^k)(√(v+eps_root)/√(1-b2^k)+eps))`` (``torch.optim.Adam``, Stable-SPAM). With ``skip_zero`` a
    tensor (per client) whose gradient is all zero leaves its moments unchanged and outputs zero (Stable-SPAM).

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, arXiv 1412.6980;
        Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR 2025,
        arXiv 2501.06842.
    """
    if eps_placement not in ("hat", "torch"):
        raise ValueError(f"eps_placement must be 'hat' or 'torch'. Got {eps_placement!r}.")
    if reset_every < 0:
        raise ValueError(f"reset_every must be >= 0. Got {reset_every!r}.")

    def init(params: Params) -> AdamWithResetsState:
        count = init_count(params)
        return AdamWithResetsState(count, count.clone(), zeros_like(params), zeros_like(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], AdamWithResetsState]:
        del params
        t = state.count + 1
        reset = (t % reset_every == 0) if reset_every else torch.zeros_like(t, dtype=torch.bool)
        mu = tree_map(lambda m: _where(reset, torch.zeros_like(m), m), state.mu)
        nu = tree_map(lambda v: _where(reset, torch.zeros_like(v), v), state.nu)
        k = (
            torch.where(reset, torch.ones_like(t), state.moment_count + 1)
            if restart_count
            else state.moment_count + 1
        )
        grads = dict(updates)
        if spike_threshold > 0:
            clip = t >= spike_start
            if reset_every:
                clip = clip & (t % reset_every >= spike_start)
            grads = tree_map(lambda g, v: _where(clip, spike_clip(g, v, spike_threshold), g), grads, nu)
        new_mu = tree_map(lambda g, m: torch.lerp(m, g, 1.0 - b1), grads, mu)
        new_nu = tree_map(lambda g, v: torch.addcmul(v * b2, g, g, value=1.0 - b2), grads, nu)
        c1 = 1.0 - b1 ** k.to(torch.float64)
        c2_sqrt = torch.sqrt(1.0 - b2 ** k.to(torch.float64))

        def precondition(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            root = torch.sqrt(v + eps_root) if eps_root else torch.sqrt(v)
            if eps_placement == "hat":
                return m / (root + eps) * expand_left(c2_sqrt / c1, m)
            return m / (root / expand_left(c2_sqrt, v) + eps) / expand_left(c1, m)

        out = tree_map(precondition, new_mu, new_nu)
        if skip_zero:
            live = {n: (g != 0).flatten(batch_dims).any(dim=-1) for n, g in grads.items()}
            new_mu = {n: _where(live[n], m, mu[n]) for n, m in new_mu.items()}
            new_nu = {n: _where(live[n], v, nu[n]) for n, v in new_nu.items()}
            out = {n: _where(live[n], u, 0.0) for n, u in out.items()}
        return out, AdamWithResetsState(t, k, new_mu, new_nu)

    return GradientTransformation(init, update)


def scale_by_reset_warmup(
    reset_every: int, warmup_steps: int, death_rate: float = 0.99
) -> GradientTransformation:
    """SPAM's cosine warm-up after each momentum reset: scale the step by ``1 - death_rate·(1+cos(π(c+1)/(W+1)))/2``
    where ``c < W`` is the number of steps since the reset step (``c = 0`` on it), and by 1 otherwise.

    Resets are at steps ``t ≡ 0 (mod reset_every)``, ``t >= 2`` (as ``pytorch_optimizer.SPAM`` counts them); before
    the first reset the factor is 1. The closed form equals the oracle's recursive ``CosineAnnealingLR`` values.

    References:
        Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR 2025,
        arXiv 2501.06842.
    """
    if reset_every < 1:
        raise ValueError(f"reset_every must be >= 1. Got {reset_every!r}.")

    def init(params: Params) -> ResetWarmupState:
        count = init_count(params)
        return ResetWarmupState(count, torch.full_like(count, warmup_steps + 1))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], ResetWarmupState]:
        del params
        c = state.since_reset.to(torch.float64)
        death = death_rate * (1.0 + torch.cos(math.pi * (c + 1.0) / (warmup_steps + 1))) / 2.0
        factor = 1.0 - torch.where(c < warmup_steps, death, torch.zeros_like(death))
        out = tree_map(lambda u: u * expand_left(factor, u), updates)
        t = state.count + 1
        since = torch.where((t + 1) % reset_every == 0, torch.zeros_like(t), state.since_reset + 1)
        return out, ResetWarmupState(t, since)

    return GradientTransformation(init, update)


def decay_after_step(rate: float) -> GradientTransformation:
    """Decoupled weight decay of the *updated* weights: ``u ← u - rate·(p + u)``, i.e. ``p_new = (p+u)(1-rate)``.

    Place after the learning rate (``rate = lr·weight_decay``): SPAM decays after applying its step.

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv 1711.05101.
    """

    def fn(updates: Updates, params: Params | None) -> dict[str, torch.Tensor]:
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        return tree_map(lambda u, p: u - rate * (p.to(u.dtype) + u), updates, params)

    return stateless(fn)


def clip_by_running_max(theta: float = 0.999, *, batch_dims: int = 0) -> GradientTransformation:
    """Stable-SPAM's adaptive spike clipping, per tensor (per client).

    ``M = lerp(M, max|g|, 1-θ)``, ``M̂ = M/(1-θ^t)``; entries with ``|g| > M̂`` become ``g / max|g| · M̂``.

    References:
        Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam", 2025, arXiv 2502.17055.
    """

    def init(params: Params) -> RunningMaxState:
        return RunningMaxState(init_count(params), _per_tensor(params, batch_dims))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], RunningMaxState]:
        del params
        t = state.count + 1
        debias = 1.0 - theta ** t.to(torch.float64)
        out, new_max = {}, {}
        for name, g in updates.items():
            axes = _axes(g, batch_dims)
            max_g = g.abs().amax(dim=axes) if axes else g.abs()
            new_max[name] = torch.lerp(state.max_abs[name], max_g, 1.0 - theta)
            hat = expand_left(new_max[name] / debias.to(g.dtype), g)
            out[name] = torch.where(g.abs() > hat, g / expand_left(max_g, g) * hat, g)
        return out, RunningMaxState(t, new_max)

    return GradientTransformation(init, update)


def normalize_by_norm_ema(
    gamma1: float = 0.7, gamma2: float = 0.9, eps: float = 1e-8, *, batch_dims: int = 0
) -> GradientTransformation:
    """Stable-SPAM's adaptive gradient norm, per tensor (per client): ``g ← g/‖g‖ · m̂/(√v̂ + eps)``.

    ``m = lerp(m, ‖g‖, 1-γ1)``, ``v = lerp(v, ‖g‖², 1-γ2)``, bias-corrected with the global step ``t``. A tensor
    whose gradient is zero passes unchanged and leaves its statistics as they were.

    References:
        Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam", 2025, arXiv 2502.17055.
    """

    def init(params: Params) -> NormEmaState:
        return NormEmaState(
            init_count(params), _per_tensor(params, batch_dims), _per_tensor(params, batch_dims)
        )

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], NormEmaState]:
        del params
        t = state.count + 1
        c1 = 1.0 - gamma1 ** t.to(torch.float64)
        c2 = 1.0 - gamma2 ** t.to(torch.float64)
        out, m_norm, v_norm = {}, {}, {}
        for name, g in updates.items():
            axes = _axes(g, batch_dims)
            norm = torch.linalg.vector_norm(g, dim=axes) if axes else g.abs()
            live = norm > 0
            m_old, v_old = state.m_norm[name], state.v_norm[name]
            m_norm[name] = torch.where(live, torch.lerp(m_old, norm, 1.0 - gamma1), m_old)
            v_norm[name] = torch.where(live, torch.lerp(v_old, norm * norm, 1.0 - gamma2), v_old)
            m_hat, v_hat = m_norm[name] / c1.to(g.dtype), v_norm[name] / c2.to(g.dtype)
            target = m_hat / (torch.sqrt(v_hat) + eps)
            safe = torch.where(live, norm, torch.ones_like(norm))
            out[name] = _where(live, g / expand_left(safe, g) * expand_left(target, g), g)
        return out, NormEmaState(t, m_norm, v_norm)

    return GradientTransformation(init, update)
