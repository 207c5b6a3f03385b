"""Model registry and the one builder every caller uses (server, workers, tests)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fedsim.errors import ConfigError
from fedsim.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model.name")


def model_names() -> list[str]:
    """Registered model names."""
    return MODELS.names()


def build_model(
    name: str,
    args: Mapping[str, Any],
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int | None = None,
) -> nn.Module:
    """Build a registered model; with ``seed`` its initial weights are a pure function of the seed.

    The factory receives ``input_shape`` and ``num_classes`` plus the scenario's ``model.args``; unknown
    arguments are a :class:`ConfigError` naming ``model.args.<key>``.
    """
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    accepted = [p for p in params if p not in ("input_shape", "num_classes")]
    for key in args:
        if key not in accepted:
            raise ConfigError(
                f"model.args.{key}", f"one of the arguments of model {name!r}: {', '.join(accepted)}", key
            )
    if seed is None:
        return factory(input_shape=input_shape, num_classes=num_classes, **args)
    # Initialise under a private RNG state so the caller's global torch RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(input_shape=input_shape, num_classes=num_classes, **args)
