"""The registry of client optimizers: each a named factory returning a gradient-core chain.

A factory takes keyword hyper-parameters (with the defaults of its paper or reference implementation) plus two
that fedsim supplies: ``roles`` (parameter name -> ``matrix`` / ``output`` / ``embedding`` / ``vector``, see
``fedsim.gradcore.partition.param_roles``) and ``batch_dims`` (0, or 1 when the tensors carry a leading client
dimension: per-tensor reductions then run per client). It returns a ``GradientTransformation`` whose updates,
added to the parameters, are the optimizer's step (learning rate included). Register with ``@register("name")``
in any module of the ``clients.optimizers`` package (every module there is imported).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fedsim.errors import ConfigError
from fedsim.gradcore import GradientTransformation
from fedsim.registry import Registry

ChainFactory = Callable[..., GradientTransformation]
CHAINS: Registry[ChainFactory] = Registry("client.optimizer.name")
SUPPLIED = ("roles", "batch_dims")


def register(name: str) -> Callable[[ChainFactory], ChainFactory]:
    """Decorator: register ``f(*, roles, batch_dims, **hyper) -> GradientTransformation`` under ``name``."""
    return CHAINS.register(name)


def accepted_args(name: str) -> list[str]:
    """The hyper-parameters optimizer ``name`` accepts (``roles``, ``batch_dims`` come from fedsim, not the user)."""
    params = inspect.signature(CHAINS.get(name)).parameters
    return [p for p in params if p not in SUPPLIED]


def check_optimizer_spec(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for an unknown name, unknown argument or non-positive learning rate."""
    accepted = accepted_args(name)
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"client.optimizer.{key}", f"one of the arguments of {name!r}: {', '.join(accepted)}", key
            )
    lr = kwargs.get("lr", 1.0)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ConfigError("client.optimizer.lr", "a number > 0", lr)


def make_chain(
    name: str, roles: Mapping[str, str], *, batch_dims: int = 0, **kwargs: Any
) -> GradientTransformation:
    """The chain of optimizer ``name`` with ``kwargs``, for parameters with ``roles`` (``batch_dims`` leading
    client dimensions)."""
    check_optimizer_spec(name, kwargs)
    try:
        return CHAINS.get(name)(roles=dict(roles), batch_dims=batch_dims, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError("client.optimizer", f"valid arguments for {name!r} ({exc})", dict(kwargs)) from None
