"""8-bit Adam and 8-bit momentum SGD: the fp32 chains of ``clients.optimizers.chains`` with 8-bit states.

Why this module exists: persistent per-client optimizer states multiply memory by the number of clients a worker
holds; block-wise 8-bit states (``fedsim.gradcore.quantize.quantized_state``) cut Adam's 8 bytes per parameter to
2.03 with the same update rule. Tensors under 4096 elements per client keep fp32 states (bitsandbytes' rule).
"""

from __future__ import annotations

from collections.abc import Mapping

from clients.optimizers.chains import adam_chain, sgd_chain
from clients.optimizers.registry import register
from fedsim.gradcore.base import GradientTransformation
from fedsim.gradcore.quantize import quantized_state


@register("adam8bit")
def adam8bit_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """``torch.optim.Adam`` (L2 weight decay) with m (signed map) and v (unsigned map) stored in 8 bits.

    Unlike ``bitsandbytes.optim.Adam8bit``, whose ``weight_decay`` is decoupled (AdamW), ``weight_decay`` here is
    the L2 term of ``adam``; use them alike only with ``weight_decay=0``.

    References:
        Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022, arXiv 2110.02861;
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, arXiv 1412.6980.
    """
    inner = adam_chain(
        roles=roles, batch_dims=batch_dims, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
    )
    return quantized_state(inner, batch_dims=batch_dims)


@register("sgd8bit")
def sgd8bit_chain(
    *,
    roles: Mapping[str, str] | None = None,
    batch_dims: int = 0,
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """``torch.optim.SGD`` with momentum, the momentum buffer stored in 8 bits (signed map).

    Raises:
        ValueError: if ``momentum`` is 0 (no state to quantise: use ``sgd``), as ``bitsandbytes.optim.SGD8bit``.

    References:
        Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022, arXiv 2110.02861;
        Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
    """
    if not momentum > 0:
        raise ValueError(f"momentum must be > 0 for sgd8bit (use sgd without momentum). Got {momentum}.")
    inner = sgd_chain(
        roles=roles,
        batch_dims=batch_dims,
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )
    return quantized_state(inner, batch_dims=batch_dims)
