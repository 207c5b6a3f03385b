"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from fedsim.errors import ConfigError
from fedsim.models.registry import MODELS


@MODELS.register("mlp")
def mlp(*, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (64,)) -> nn.Module:
    """Flatten → [Linear → ReLU] per hidden width → Linear to ``num_classes`` logits.

    Args:
        input_shape: shape of one example (flattened here).
        num_classes: number of output logits.
        hidden: widths of the hidden layers (``[]`` gives multinomial logistic regression).
    """
    if not all(isinstance(h, int) and h >= 1 for h in hidden):
        raise ConfigError("model.args.hidden", "a list of integers >= 1", list(hidden))
    widths = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)
