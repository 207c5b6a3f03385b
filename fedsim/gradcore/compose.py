"""Combinators over transforms: apply one several times, or restart one's state on a schedule.

Why this module exists: SinkGD alternates normalisations for L rounds (``repeat``), and SPAM / Stable-SPAM reset
their moments every ΔT steps (``reset_every``); both are general, so they are combinators, not special cases.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fedsim.gradcore.base import GradientTransformation, OptState, Params, Updates, init_count


class ResetEveryState(NamedTuple):
    """Steps taken, and the inner transform's state."""

    count: torch.Tensor
    inner: OptState


class RepeatState(NamedTuple):
    """The inner transform's state after each of the L applications."""

    inner: tuple[OptState, ...]


def repeat(inner: GradientTransformation, times: int) -> GradientTransformation:
    """Apply ``inner`` ``times`` times in a row to the updates (each application keeps its own state).

    References:
        Scetbon et al., "Gradient Multi-Normalization for Stateless and Scalable LLM Training", 2025,
        arXiv 2502.06742 (L rounds of alternating normalisations).
    """
    if times < 1:
        raise ValueError(f"times must be >= 1. Got {times!r}.")

    def init(params: Params) -> RepeatState:
        return RepeatState(tuple(inner.init(params) for _ in range(times)))

    def update(updates: Updates, state: OptState, params: Params | None = None):
        out, states = dict(updates), []
        for s in state.inner:
            out, s = inner.update(out, s, params)
            states.append(s)
        return out, RepeatState(tuple(states))

    return GradientTransformation(init, update)


def reset_every(inner: GradientTransformation, every: int) -> GradientTransformation:
    """Re-initialise ``inner``'s state before every ``every``-th step (steps ``every``, ``2·every``, ... counted
    from 0), e.g. a momentum reset. The whole state restarts, step counters included.

    References:
        Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR 2025,
        arXiv 2501.06842 (periodic momentum reset).
    """
    if every < 1:
        raise ValueError(f"every must be >= 1. Got {every!r}.")

    def init(params: Params) -> ResetEveryState:
        return ResetEveryState(init_count(params), inner.init(params))

    def update(updates: Updates, state: OptState, params: Params | None = None):
        inner_state = state.inner
        if int(state.count) > 0 and int(state.count) % every == 0:
            inner_state = inner.init({k: torch.zeros_like(v) for k, v in updates.items()})
        out, inner_state = inner.update(updates, inner_state, params)
        return out, ResetEveryState(state.count + 1, inner_state)

    return GradientTransformation(init, update)
