"""SGD, Adam and AdamW as gradient-core chains, step for step equal to ``torch.optim`` (tested against it).

The learning rate is part of the chain (``scale_by_learning_rate``); ``roles`` is unused by these element-wise
optimizers.
"""

from __future__ import annotations

from collections.abc import Mapping

from clients.optimizers.registry import register
from fedsim import gradcore
from fedsim.gradcore import GradientTransformation


@register("sgd")
def sgd_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 0.01,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """``torch.optim.SGD``: L2 weight decay into the gradient, then (Nesterov) momentum, then ``-lr``.

    References:
        Polyak, 1964; Sutskever et al., "On the importance of initialization and momentum in deep learning",
        ICML 2013.
    """
    parts = [gradcore.add_decayed_weights(weight_decay)] if weight_decay else []
    parts += [gradcore.trace(momentum, nesterov)] if momentum else []
    return gradcore.chain(*parts, gradcore.scale_by_learning_rate(lr))


@register("adam")
def adam_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """``torch.optim.Adam``: L2 weight decay into the gradient, bias-corrected Adam moments, ``-lr``.

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, arXiv 1412.6980.
    """
    parts = [gradcore.add_decayed_weights(weight_decay)] if weight_decay else []
    b1, b2 = betas
    return gradcore.chain(*parts, gradcore.scale_by_adam(b1, b2, eps), gradcore.scale_by_learning_rate(lr))


@register("adamw")
def adamw_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> GradientTransformation:
    """``torch.optim.AdamW``: Adam moments, then decoupled weight decay on the pre-step weights, ``-lr``.

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv 1711.05101.
    """
    b1, b2 = betas
    parts = [gradcore.scale_by_adam(b1, b2, eps)]
    parts += [gradcore.add_decayed_weights(weight_decay)] if weight_decay else []
    return gradcore.chain(*parts, gradcore.scale_by_learning_rate(lr))
