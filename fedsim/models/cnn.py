"""A small convolutional network for image-like or 1-D signal inputs."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fedsim.errors import ConfigError
from fedsim.models.registry import MODELS

if TYPE_CHECKING:
    from torch import nn


def _conv_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """(C,H,W) stays; a flat square input (e.g. digits' 64) becomes (1,√n,√n); other flat inputs (1,n) 1-D."""
    if len(input_shape) == 3:
        return input_shape
    n = math.prod(input_shape)
    side = math.isqrt(n)
    if len(input_shape) == 2:
        return input_shape  # (C, L) signal
    return (1, side, side) if side * side == n else (1, n)


@MODELS.register("cnn")
def cnn(*, input_shape: tuple[int, ...], num_classes: int, channels: int = 16, hidden: int = 64) -> nn.Module:
    """Two conv blocks (conv 3 → ReLU → max-pool 2) → Linear(hidden) → ReLU → Linear(num_classes).

    2-D convolutions for (C,H,W) or flat square inputs, 1-D convolutions for signals. No BatchNorm, so the
    model is also usable with per-sample gradients and vectorised training.

    Args:
        input_shape: shape of one example.
        num_classes: number of output logits.
        channels: channels of the first conv block (the second has twice as many).
        hidden: width of the fully connected layer.
    """
    if channels < 1 or hidden < 1:
        raise ConfigError(
            "model.args", "channels >= 1 and hidden >= 1", {"channels": channels, "hidden": hidden}
        )
    import torch
    from torch import nn

    from fedsim.models.layers import Reshape

    shape = _conv_shape(tuple(input_shape))
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if len(shape) == 3 else (nn.Conv1d, nn.MaxPool1d)
    body = nn.Sequential(
        Reshape(shape),
        conv(shape[0], channels, 3, padding=1),
        nn.ReLU(),
        pool(2),
        conv(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        pool(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = body(torch.zeros(1, *input_shape)).shape[1]
    return nn.Sequential(*body, nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
