"""Momentum (heavy-ball and Nesterov) as a gradient transform.

Why this module exists: momentum is shared by client SGD, server FedAvgM and several of the later optimizers; one
transform with ``torch.optim.SGD``'s exact semantics keeps them all consistent with PyTorch. Element-wise, so a
leading client dimension passes through unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fedsim.gradcore.base import GradientTransformation, OptState, Params, Updates, tree_map, zeros_like


class TraceState(NamedTuple):
    """The momentum buffer, one tensor per parameter."""

    trace: dict[str, torch.Tensor]


def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    """Momentum with ``torch.optim.SGD`` semantics (dampening 0): ``buf = decay * buf + g``.

    Returns ``buf`` (heavy ball) or ``g + decay * buf`` (Nesterov). The buffer starts at zero, so the first step
    gives ``buf = g`` exactly as PyTorch's special case for its first step does (and as Flower's FedAvgM does).

    References:
        Polyak, "Some methods of speeding up the convergence of iteration methods", 1964;
        Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
    """

    def init(params: Params) -> TraceState:
        return TraceState(trace=zeros_like(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], TraceState]:
        del params
        buf = tree_map(lambda g, b: decay * b + g, updates, state.trace)
        out = tree_map(lambda g, b: g + decay * b, updates, buf) if nesterov else dict(buf)
        return out, TraceState(trace=buf)

    return GradientTransformation(init, update)
