"""diffGrad, SPAM and Stable-SPAM as gradient-core chains, step for step equal to ``pytorch_optimizer`` 4.1.0.

Hyper-parameter names and defaults are the oracle's (``pytorch_optimizer.DiffGrad`` / ``SPAM`` / ``StableSPAM``),
so a configuration carries over unchanged. All three are element-wise or per-tensor, so ``roles`` is unused;
``batch_dims`` makes Stable-SPAM's per-tensor statistics per client.

In federated learning with a fresh client state each round and fewer than ``grad_accu_steps`` (20) local steps,
SPAM never clips nor resets: it is then Adam with ``eps`` outside the bias correction.
"""

from __future__ import annotations

from collections.abc import Mapping

from clients.optimizers.registry import register
from fedsim.gradcore.base import GradientTransformation, chain
from fedsim.gradcore.scaling import add_decayed_weights, scale_by_learning_rate
from fedsim.gradcore.spike import (
    clip_by_running_max,
    decay_after_step,
    normalize_by_norm_ema,
    scale_by_adam_with_resets,
    scale_by_diffgrad,
    scale_by_reset_warmup,
)

# ``pytorch_optimizer`` adds this inside the square root of diffGrad's second moment (``apply_ams_bound``).
DIFFGRAD_EPS_ROOT = 1e-15


@register("diffgrad")
def diffgrad_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """diffGrad: Adam ("hat" eps) with each element's step times ``sigmoid(|g_{t-1} - g_t|)``; decoupled decay.

    As ``pytorch_optimizer.DiffGrad`` (``weight_decouple=True``, no rectification, no AMSBound).

    References:
        Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks", IEEE TNNLS 2020,
        arXiv 1909.11015.
    """
    b1, b2 = betas
    adam = scale_by_adam_with_resets(b1, b2, eps, eps_root=DIFFGRAD_EPS_ROOT, eps_placement="hat")
    parts = [scale_by_diffgrad(adam)]
    parts += [add_decayed_weights(weight_decay)] if weight_decay else []
    return chain(*parts, scale_by_learning_rate(lr))


@register("spam")
def spam_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    warmup_epoch: int = 50,
    threshold: float = 5000,
    grad_accu_steps: int = 20,
    update_proj_gap: int = 500,
    eps: float = 1e-6,
) -> GradientTransformation:
    """SPAM: Adam ("hat" eps) with spike clipping, a momentum reset every ``update_proj_gap`` steps and a cosine
    warm-up of ``warmup_epoch`` steps after each reset.

    Spike clipping (``g² > threshold·v`` → ``sign(g)√(threshold·v)``) runs when ``t >= grad_accu_steps`` and
    ``t mod update_proj_gap >= grad_accu_steps``; a reset zeroes ``m`` and ``v`` at ``t ≡ 0 (mod
    update_proj_gap)`` but keeps the bias-correction count. Weight decay multiplies the weights by
    ``1 - lr·weight_decay`` after the step, as the oracle does. Dense momentum only (the oracle's ``density=1``).

    References:
        Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR 2025,
        arXiv 2501.06842.
    """
    b1, b2 = betas
    parts = [
        scale_by_adam_with_resets(
            b1,
            b2,
            eps,
            eps_placement="hat",
            reset_every=update_proj_gap,
            spike_threshold=threshold,
            spike_start=grad_accu_steps,
        ),
        scale_by_reset_warmup(update_proj_gap, warmup_epoch),
        scale_by_learning_rate(lr),
    ]
    parts += [decay_after_step(lr * weight_decay)] if weight_decay else []
    return chain(*parts)


@register("stable_spam")
def stable_spam_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    gamma1: float = 0.7,
    gamma2: float = 0.9,
    theta: float = 0.999,
    weight_decay: float = 0.0,
    update_proj_gap: int = 1000,
    eps: float = 1e-8,
) -> GradientTransformation:
    """Stable-SPAM: per tensor, clip at a running max of ``|g|``, rescale by norm EMAs, then Adam ("torch" eps)
    with a momentum reset every ``update_proj_gap`` steps; decoupled weight decay.

    Resets follow ``pytorch_optimizer.StableSPAM``, not the authors' code: at ``t ≡ 0 (mod update_proj_gap)`` the
    moments are zeroed and Adam's bias-correction count restarts at 1, while the clipping and norm statistics keep
    the global count and are never reset. ``gamma1=-1`` means ``betas[0]``. The oracle's optional cosine decay of
    the momentum coefficients (``t_max``) is not offered (off by default there).

    References:
        Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam", 2025, arXiv 2502.17055.
    """
    b1, b2 = betas
    parts = [
        clip_by_running_max(theta, batch_dims=batch_dims),
        normalize_by_norm_ema(b1 if gamma1 == -1.0 else gamma1, gamma2, eps, batch_dims=batch_dims),
        scale_by_adam_with_resets(
            b1,
            b2,
            eps,
            eps_placement="torch",
            reset_every=update_proj_gap,
            restart_count=True,
            skip_zero=True,
            batch_dims=batch_dims,
        ),
    ]
    parts += [add_decayed_weights(weight_decay)] if weight_decay else []
    return chain(*parts, scale_by_learning_rate(lr))
