"""Server optimizers (FedAvg/FedAvgM, FedAdam, FedYogi) as gradcore chains applied to the pseudo-gradient.

Why this module exists: a scenario names its server optimizer (``strategy.server_optimizer: {name: adam, lr: 0.1}``)
and this registry is the one place that name and its arguments are resolved and validated. Each optimizer is a
named chain of ``fedsim.gradcore`` transforms, so FedOpt needs no strategy subclass per optimizer.

The strategy computes the pseudo-gradient ``delta = theta - mean_i(theta_i)`` (a gradient: descent is along
``-delta``) and applies ``updates, state = opt.update(delta, state, theta); theta = apply_updates(theta, updates)``.
With ``sgd`` at ``lr=1`` and no momentum this is exactly FedAvg.

References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295;
    Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification",
    2019, arXiv 1909.06335 (FedAvgM).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from fedsim.errors import ConfigError
from fedsim.gradcore import (
    GradientTransformation,
    chain,
    identity,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_yogi,
    trace,
)
from fedsim.registry import Registry

FIELD = "strategy.server_optimizer"

SERVER_OPTIMIZERS: Registry[Callable[..., GradientTransformation]] = Registry(f"{FIELD}.name")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{FIELD}.{key}", "a finite number", value)
    return float(value)


def _positive(key: str, value: Any) -> float:
    if _number(key, value) <= 0.0:
        raise ConfigError(f"{FIELD}.{key}", "> 0", value)
    return float(value)


def _unit(key: str, value: Any) -> float:
    """A decay rate in [0, 1)."""
    if not 0.0 <= _number(key, value) < 1.0:
        raise ConfigError(f"{FIELD}.{key}", "in [0, 1)", value)
    return float(value)


@SERVER_OPTIMIZERS.register("sgd")
def sgd(*, lr: float = 1.0, momentum: float = 0.0, nesterov: bool = False) -> GradientTransformation:
    """Server SGD with optional momentum: FedAvg (``lr=1``, no momentum) or FedAvgM.

    Same update as Flower's ``FedAvgM(server_learning_rate=lr, server_momentum=momentum)`` and
    ``torch.optim.SGD(lr, momentum, nesterov)`` on the pseudo-gradient.

    References:
        Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
        Classification", 2019, arXiv 1909.06335.
    """
    lr, momentum = _positive("lr", lr), _unit("momentum", momentum)
    if not isinstance(nesterov, bool):
        raise ConfigError(f"{FIELD}.nesterov", "true or false", nesterov)
    if nesterov and momentum == 0.0:
        raise ConfigError(f"{FIELD}.nesterov", "false when momentum is 0 (as in torch.optim.SGD)", nesterov)
    return chain(trace(momentum, nesterov) if momentum else identity(), scale_by_learning_rate(lr))


@SERVER_OPTIMIZERS.register("fedavgm")
def fedavgm(*, lr: float = 1.0, momentum: float = 0.9, nesterov: bool = False) -> GradientTransformation:
    """``sgd`` with server momentum 0.9 by default (FedAvgM).

    References:
        Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
        Classification", 2019, arXiv 1909.06335.
    """
    return sgd(lr=lr, momentum=momentum, nesterov=nesterov)


@SERVER_OPTIMIZERS.register("adam", "fedadam")
def adam(
    *, lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> GradientTransformation:
    """FedAdam: Adam moments of the pseudo-gradient, no bias correction, ``theta -= lr * m / (sqrt(v) + tau)``.

    Defaults are Flower's ``FedAdam`` (which, unlike the paper, also bias-corrects its step size).

    References:
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295 (Algorithm 2).
    """
    lr, beta1, beta2, tau = (
        _positive("lr", lr),
        _unit("beta1", beta1),
        _unit("beta2", beta2),
        _positive("tau", tau),
    )
    return chain(scale_by_adam(beta1, beta2, tau, bias_correction=False), scale_by_learning_rate(lr))


@SERVER_OPTIMIZERS.register("yogi", "fedyogi")
def yogi(
    *, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> GradientTransformation:
    """FedYogi: Yogi's additive second moment (``v`` starts at 0), no bias correction.

    Defaults are Flower's ``FedYogi``.

    References:
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295 (Algorithm 2).
    """
    lr, beta1, beta2, tau = (
        _positive("lr", lr),
        _unit("beta1", beta1),
        _unit("beta2", beta2),
        _positive("tau", tau),
    )
    return chain(
        scale_by_yogi(beta1, beta2, tau, initial_v=0.0, bias_correction=False), scale_by_learning_rate(lr)
    )


def server_optimizer_names() -> list[str]:
    """Sorted names (and aliases) of the registered server optimizers."""
    return SERVER_OPTIMIZERS.names()


def build_server_optimizer(spec: Mapping[str, Any]) -> GradientTransformation:
    """Build the server optimizer described by ``spec = {"name": ..., **kwargs}`` (from the scenario).

    Raises:
        ConfigError: the name is missing or unknown (``UnknownNameError``, listing known names), an argument is not
            accepted by that optimizer (the message lists the accepted ones), or a value is out of range.
    """
    if "name" not in spec:
        raise ConfigError(f"{FIELD}.name", "given (one of " + ", ".join(server_optimizer_names()) + ")")
    name = spec["name"]
    factory = SERVER_OPTIMIZERS.get(name)
    kwargs = {key: value for key, value in spec.items() if key != "name"}
    accepted = list(inspect.signature(factory).parameters)
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"{FIELD}.{key}", f"an argument of {name!r} (one of {', '.join(accepted)})", key
            )
    return factory(**kwargs)
