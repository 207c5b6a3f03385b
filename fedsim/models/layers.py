"""Layers the models share, in their own module: the model modules import torch only when they build a model."""

from __future__ import annotations

import torch
from torch import nn


class Reshape(nn.Module):
    """Reshape each example (the batch dimension kept) to ``shape``: flat inputs fed to convolutions."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)
