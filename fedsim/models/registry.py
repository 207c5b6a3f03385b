"""Model registry and the one builder every caller uses (server, workers, tests)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from fedsim.argspec import ArgSpec, choice, integers, num
from fedsim.errors import ConfigError
from fedsim.registry import Registry

if TYPE_CHECKING:  # imported by the builders: the declarations here must import without torch (fedsim.models)
    from torch import nn

ModelFactory = Callable[..., "nn.Module"]
MODELS: Registry[ModelFactory] = Registry("model.name")

MODEL_ARGS: dict[str, ArgSpec] = {
    "mlp": ArgSpec(
        (integers("hidden", [64], low=1, empty_ok=True), choice("activation", "relu", ("relu", "softplus")))
    ),
    "cnn": ArgSpec((num("channels", 16, integer=True, low=1), num("hidden", 64, integer=True, low=1))),
    "simple_cnn": ArgSpec(
        (
            num("conv_dropout", 0.0, low=0, high=1, high_open=True, expected="a probability in [0, 1)"),
            num("dense_dropout", 0.0, low=0, high=1, high_open=True, expected="a probability in [0, 1)"),
        )
    ),
}
"""``model.args`` of each registered model: accepted keys, types, ranges and the model's own defaults (equal to
its factory's keyword defaults; a test keeps the two in step). Checked without building the model."""


def resolve_model_args(name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """``model.args`` checked against model ``name``'s spec, its defaults filled in; builds nothing.

    Raises:
        UnknownNameError: ``name`` is not a registered model.
        ConfigError: an unknown key or a bad value, naming ``model.args.<key>``.
    """
    MODELS.get(name)
    spec = MODEL_ARGS[name]
    if isinstance(args, Mapping):
        for key in args:
            if key not in spec.names:
                accepted = ", ".join(spec.names) or "none"
                raise ConfigError(
                    f"model.args.{key}", f"one of the arguments of model {name!r}: {accepted}", key
                )
    return spec.resolve(args, field="model.args", owner=f"model {name}")


def vectorize_blocker(name: str, args: Mapping[str, Any]) -> str | None:
    """Why model ``name`` with resolved ``args`` cannot train on the vectorised path, or ``None`` (the reasons
    ``fedsim.engine.vectorized.vectorizable`` finds on the built model, known here from the arguments alone)."""
    if name == "simple_cnn" and (args.get("conv_dropout") or args.get("dense_dropout")):
        return "the model has active dropout (its random masks would differ from the sequential path's)"
    return None


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

    The factory receives ``input_shape`` and ``num_classes`` plus the scenario's ``model.args`` resolved by the
    model's spec (``MODEL_ARGS``); a bad argument is a :class:`ConfigError` naming ``model.args.<key>``.
    """
    import torch

    factory = MODELS.get(name)
    args = resolve_model_args(name, args)
    if seed is None:
        return factory(input_shape=input_shape, num_classes=num_classes, **args)
    # Initialise under a private RNG state so the caller's global torch RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(input_shape=input_shape, num_classes=num_classes, **args)
