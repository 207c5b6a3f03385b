"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedsim.errors import ConfigError
from fedsim.models.registry import MODELS

if TYPE_CHECKING:
    from torch import nn

ACTIVATIONS = {"relu": "ReLU", "softplus": "Softplus"}
"""``activation`` names and their ``torch.nn`` classes (by name: torch is imported when the model is built)."""


@MODELS.register("mlp")
def mlp(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (64,),
    activation: str = "relu",
) -> nn.Module:
    """Flatten → [Linear → activation] per hidden width → Linear to ``num_classes`` outputs.

    Args:
        input_shape: shape of one example (flattened here).
        num_classes: number of output logits (1: one real output, for regression).
        hidden: widths of the hidden layers (``[]`` gives multinomial logistic regression).
        activation: ``relu`` or ``softplus`` (DIFF2's experiments use a softplus hidden layer).
    """
    if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise ConfigError("model.args.hidden", "a list of integers >= 1", list(hidden))
    if activation not in ACTIVATIONS:
        raise ConfigError("model.args.activation", f"one of {', '.join(ACTIVATIONS)}", activation)
    from torch import nn

    widths = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), getattr(nn, ACTIVATIONS[activation])()]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)
