"""Client optimizers by name: ``build(name, params, **kwargs) -> torch.optim.Optimizer``.

This is the registry the scenario's ``client.optimizer`` resolves through. The optimizers here are
``torch.optim``'s own; the gradient-core chains (diffGrad, SPAM, ...) join the same registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from fedsim.errors import ConfigError
from fedsim.registry import Registry

OptimizerFactory = Callable[..., torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("client.optimizer.name")


@OPTIMIZERS.register("sgd")
def _sgd(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float = 0.01,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Plain SGD with optional (Nesterov) momentum and weight decay, as ``torch.optim.SGD``."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def _adam(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba, arXiv 1412.6980), as ``torch.optim.Adam``."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, arXiv 1711.05101), as ``torch.optim.AdamW``."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def names() -> list[str]:
    """Every registered client optimizer name."""
    return OPTIMIZERS.names()


def check_optimizer_spec(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for an unknown name, unknown argument or non-positive learning rate."""
    factory = OPTIMIZERS.get(name)
    accepted = [p for p in inspect.signature(factory).parameters if p != "params"]
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"client.optimizer.{key}", f"one of the arguments of {name!r}: {', '.join(accepted)}", key
            )
    lr = kwargs.get("lr", 1.0)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ConfigError("client.optimizer.lr", "a number > 0", lr)


def build(name: str, params: Iterable[torch.nn.Parameter], **kwargs: Any) -> torch.optim.Optimizer:
    """Build the registered optimizer ``name`` over ``params``."""
    check_optimizer_spec(name, kwargs)
    try:
        return OPTIMIZERS.get(name)(params, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError("client.optimizer", f"valid arguments for {name!r} ({exc})", dict(kwargs)) from None
