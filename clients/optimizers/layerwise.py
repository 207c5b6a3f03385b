"""Optimizers that set each layer's or group's step size from its own statistics: Fira-limited Adam, AGVM momentum
SGD and LANTON, as gradient-core chains (transforms in ``fedsim.gradcore.layerwise``).

Client state matters here: AGVM's factors only move from step ``start`` (500 by default) and LANTON's noise
estimates need a few steps, so with ``client.optimizer_state: fresh`` and a handful of local steps both reduce to
their base optimizer (momentum SGD; an unscaled momentum LMO step).
"""

from __future__ import annotations

from collections.abc import Mapping

from clients.optimizers.registry import register
from fedsim.gradcore.adaptive import scale_by_adam
from fedsim.gradcore.base import GradientTransformation, chain
from fedsim.gradcore.layerwise import (
    LMO_OF_ROLE,
    agvm_groups,
    norm_growth_limit,
    scale_by_group_factor,
    scale_by_lanton,
)
from fedsim.gradcore.momentum import trace
from fedsim.gradcore.scaling import add_decayed_weights, scale_by_learning_rate


@register("fira_adam")
def fira_adam_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    gamma: float = 1.01,
) -> GradientTransformation:
    """Adam whose per-tensor update norm may grow by at most ``gamma`` per step (Fira's norm-growth limiter).

    Adam moments (``torch.optim.Adam``'s), then ``norm_growth_limit(gamma)`` per tensor, then decoupled weight
    decay (not limited) and ``-lr``. Fira applies the limiter to its full-rank residual term; here it acts on the
    whole Adam update, as a stand-alone loss-spike guard.

    References:
        Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?", arXiv
        2410.01623, 2024; Kingma & Ba, "Adam", ICLR 2015, arXiv 1412.6980.
    """
    b1, b2 = betas
    parts = [scale_by_adam(b1, b2, eps), norm_growth_limit(gamma, batch_dims=batch_dims)]
    parts += [add_decayed_weights(weight_decay)] if weight_decay else []
    return chain(*parts, scale_by_learning_rate(lr))


@register("agvm_sgd")
def agvm_sgd_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    every: int = 5,
    start: int = 500,
    stop: int | None = None,
    ema: float = 0.97,
    consecutive: bool = True,
    groups: Mapping[str, int] | None = None,
) -> GradientTransformation:
    """Momentum SGD (``torch.optim.SGD`` semantics) whose step per module group is scaled by AGVM's factor.

    Groups: 0 = backbone (all but the output layer), 1 = the output layer's module (``agvm_groups``); ``groups``
    overrides names. Through ``optimizer.step()`` the two gradient samples are consecutive steps' gradients
    (``consecutive=True``, an approximation: see ``scale_by_group_factor``); the paper's half-batch gradients are
    used when the chain is given ``split_grads(g_a, g_b)``.

    References:
        Xie et al., "Large-batch Optimization for Dense Visual Predictions", NeurIPS 2022, arXiv 2210.11078
        (code Sense-X/AGVM).
    """
    if roles is None:
        raise ValueError("agvm_sgd needs the parameter roles to find the output layer. Got roles=None.")
    inner = [add_decayed_weights(weight_decay)] if weight_decay else []
    inner += [trace(momentum)] if momentum else []
    return scale_by_group_factor(
        chain(*inner, scale_by_learning_rate(lr)),
        agvm_groups(roles, groups),
        every=every,
        start=start,
        stop=stop,
        ema=ema,
        consecutive=consecutive,
        batch_dims=batch_dims,
    )


@register("lanton")
def lanton_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 0.02,
    b1: float = 0.9,
    b2: float = 0.99,
    ns_steps: int = 5,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """LANTON: momentum LMO steps (hidden matrices orthogonalised, embedding/head sign, vectors RMS-normalised)
    with noise-adaptive per-layer rates within each LMO group; decoupled weight decay; ``-lr``.

    The noise estimator and the factor formula are this implementation's reading of the paper, not confirmed
    against its Algorithm 1 (see ``fedsim.gradcore.layerwise.scale_by_lanton``).

    References:
        Hao et al., "Noise-Adaptive Layerwise Learning Rates: Accelerating Geometry-Aware Optimization for Deep
        Neural Network Training", arXiv 2510.14009, 2025.
    """
    if roles is None:
        raise ValueError("lanton needs the parameter roles to choose each layer's LMO. Got roles=None.")
    kinds = {name: LMO_OF_ROLE[role] for name, role in roles.items()}
    parts = [scale_by_lanton(kinds, b1=b1, b2=b2, ns_steps=ns_steps, batch_dims=batch_dims)]
    parts += [add_decayed_weights(weight_decay)] if weight_decay else []
    return chain(*parts, scale_by_learning_rate(lr))
