"""pfl-research's ``simple_cnn``: the CIFAR-10 benchmark model (1.63 M parameters at 3×32×32, 10 classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.errors import ConfigError
from fedsim.models.registry import MODELS

if TYPE_CHECKING:
    from torch import nn


@MODELS.register("simple_cnn")
def simple_cnn(
    *, input_shape: tuple[int, ...], num_classes: int, conv_dropout: float = 0.0, dense_dropout: float = 0.0
) -> nn.Module:
    """conv 3×3 (32) → ReLU → conv 3×3 (64) → ReLU → max-pool 2 → Linear(128) → ReLU → Linear(num_classes).

    The layer sizes of pfl-research's CIFAR-10 benchmark model, so timings compare with its published ones.
    pfl uses dropout 0.25 / 0.5 and Glorot-uniform weights; here dropout is off by default (a model with active
    dropout cannot train on the vectorised path with results equal to the sequential one) and weights keep
    PyTorch's default initialisation. Input is ``(C, H, W)``.

    References:
        Granqvist et al., "pfl-research: simulation framework for accelerating research in Private Federated
        Learning", arXiv 2404.06430, 2024 (``benchmarks/model/pytorch/cnn.py``, ``simple_cnn``).
    """
    if len(input_shape) != 3:
        raise ConfigError(
            "model.name", "a model for flat inputs (simple_cnn needs (C, H, W) images)", "simple_cnn"
        )
    for field, p in (("conv_dropout", conv_dropout), ("dense_dropout", dense_dropout)):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"model.args.{field}", "a probability in [0, 1)", p)
    import torch
    from torch import nn

    body = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        *([nn.Dropout(conv_dropout)] if conv_dropout else []),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = body(torch.zeros(1, *input_shape)).shape[1]
    head = [nn.Linear(flat, 128), nn.ReLU(), *([nn.Dropout(dense_dropout)] if dense_dropout else [])]
    return nn.Sequential(*body, *head, nn.Linear(128, num_classes))
