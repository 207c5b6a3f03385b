"""The gradient-transformation protocol shared by client and server optimizers.

Why this module exists: every gradient feature in fedsim (momentum, Adam moments, clipping, DP noise, the FedOpt
server optimizers) is one small factory returning the same pair of pure functions, and an optimizer is a ``chain``
of them. Keeping the contract in one place, in plain torch, lets the same transform run on a client, on the server
and inside a privacy wrapper, and lets a contract test suite check every transform the same way.

Conventions:

* ``Params`` / ``Updates`` are ordered mappings name -> tensor (the model's ``state_dict`` order); the layer
  structure is kept so per-layer transforms can select tensors by name. Every function returns a new ``dict``
  in the order of its first argument and never modifies a tensor it was given.
* ``update`` returns *updates that are added* to the parameters (optax convention):
  ``apply_updates(params, updates) == params + updates``. Descent therefore needs a negative scale, which
  ``scale_by_learning_rate`` supplies.
* States are immutable ``NamedTuple``s named ``<Name>State`` holding tensors (and dicts of tensors), so
  ``torch.save`` checkpoints them and ``torch.load`` restores them.
* Leading client dimension: every transform accepts tensors shaped ``[*shape]`` or ``[K, *shape]`` (a vectorised
  cohort of K clients in one call). Element-wise transforms are indifferent to it; reductions count their axes
  from the end and take an explicit ``batch_dims`` keyword (``batch_dims=1``: one result per client). Give
  ``init`` the stacked parameters so the state carries the client dimension too. Step counters are int64
  tensors; they may be scalars (the whole cohort steps together) or shaped ``[K]`` (stacked per-client states),
  and are broadcast from the left against the tensors they scale (see ``expand_left``).

References:
    Babuschkin et al., "The DeepMind JAX Ecosystem" (optax: ``optax/_src/base.py``), 2020.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import torch

Params = Mapping[str, torch.Tensor]
"""Ordered map parameter name -> tensor (optionally with a leading client dimension)."""
Updates = Params
"""Gradients or updates: the same names and shapes as the parameters."""
OptState = Any
"""A transform's state: a ``NamedTuple`` of tensors / dicts of tensors (or a tuple of such, for ``chain``)."""
Schedule = Callable[[torch.Tensor], "float | torch.Tensor"]
"""Maps the int64 step count (0 on the first update) to a value, e.g. a learning rate."""

NO_PARAMS_MSG = "this transform needs the current parameters: pass `params` to `update`"


class TransformInitFn(Protocol):
    """Builds the initial state from example parameters (their names, shapes, dtypes and devices)."""

    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    """Maps ``(updates, state, params)`` to ``(new_updates, new_state)`` without mutating any input."""

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions ``init(params) -> state`` and ``update(updates, state, params) -> (updates, state)``.

    All memory (moments, step counts, RNG state) lives in the state, never in the closure, so a transform can be
    checkpointed, resumed, and applied to many clients by stacking their states.
    """

    init: TransformInitFn
    update: TransformUpdateFn
    trailing_scale: tuple[GradientTransformation, float] | None = None
    """``(head, factor)`` when this transform is ``head`` followed by a multiplication by the constant ``factor``
    (``scale``, and a ``chain`` ending in one); else None. ``head``'s state has the same structure as this
    transform's, so either can step it. A caller that adds the updates to parameters in place may apply ``head`` and
    fold the factor into the addition (``p.add_(u, alpha=factor)``): one pass over memory fewer per step, equal to
    ``apply_updates`` up to the rounding of one multiply-add."""


class EmptyState(NamedTuple):
    """The state of a stateless transform."""


class ChainState(NamedTuple):
    """The states of a chain's transforms, in order."""

    inner: tuple[OptState, ...]


def tree_map(fn: Callable[..., torch.Tensor], tree: Params, *rest: Params) -> dict[str, torch.Tensor]:
    """Apply ``fn`` name by name to ``tree`` and the trees in ``rest`` (which must have the same names).

    Returns:
        A new dict in the order of ``tree``.

    Raises:
        ValueError: if the trees do not have the same names.
    """
    for other in rest:
        if other.keys() != tree.keys():
            missing = sorted(set(tree) - set(other))
            extra = sorted(set(other) - set(tree))
            raise ValueError(f"tensor names must match. Missing {missing}, unexpected {extra}.")
    return {name: fn(x, *(other[name] for other in rest)) for name, x in tree.items()}


def expand_left(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``value`` (shape ``[]`` or ``[K]``) to broadcast against ``like`` from the left, in its dtype."""
    value = value.to(dtype=like.dtype, device=like.device)
    return value.reshape(value.shape + (1,) * (like.dim() - value.dim()))


def zeros_like(params: Params) -> dict[str, torch.Tensor]:
    """Fresh zero tensors shaped like ``params`` (never requiring grad)."""
    return tree_map(lambda p: torch.zeros_like(p, requires_grad=False), params)


def init_count(params: Params) -> torch.Tensor:
    """A scalar int64 step counter on the parameters' device."""
    device = next(iter(params.values())).device if params else None
    return torch.zeros((), dtype=torch.int64, device=device)


def identity() -> GradientTransformation:
    """The stateless transform that returns the updates unchanged (as a new dict).

    Returns:
        A ``GradientTransformation`` (:func:`is_identity` says so of it, and of a chain of identities).
    """

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], OptState]:
        del params
        return dict(updates), state

    _IDENTITY_UPDATES.add(update)
    return GradientTransformation(init, update)


_IDENTITY_UPDATES: weakref.WeakSet = weakref.WeakSet()
"""The ``update`` functions of :func:`identity` transforms and of chains made only of them (pure functions)."""


def is_identity(tx: GradientTransformation) -> bool:
    """Whether ``tx`` leaves every update as it is (``identity()``, or a chain of them): e.g. plain SGD's head
    once its learning rate is split off (``trailing_scale``), which lets a trainer apply gradients directly."""
    return tx.update in _IDENTITY_UPDATES


def stateless(fn: Callable[[Updates, Params | None], dict[str, torch.Tensor]]) -> GradientTransformation:
    """Wrap ``fn(updates, params) -> updates`` as a transform with an ``EmptyState``.

    Returns:
        A ``GradientTransformation``.
    """

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], OptState]:
        del state
        return fn(updates, params), EmptyState()

    return GradientTransformation(init, update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order, each to the previous one's output; the state is a ``ChainState``.

    Returns:
        A ``GradientTransformation``.
    """

    def init(params: Params) -> ChainState:
        return ChainState(tuple(t.init(params) for t in transforms))

    def update(
        updates: Updates, state: ChainState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], ChainState]:
        if len(state.inner) != len(transforms):
            raise ValueError(f"chain state must hold {len(transforms)} states. Got {len(state.inner)}.")
        out: dict[str, torch.Tensor] = dict(updates)
        new_states = []
        for transform, inner in zip(transforms, state.inner, strict=True):
            out, inner = transform.update(out, inner, params)
            new_states.append(inner)
        return out, ChainState(tuple(new_states))

    last = transforms[-1].trailing_scale if transforms else None
    split = None if last is None else (chain(*transforms[:-1], last[0]), last[1])
    if transforms and all(is_identity(t) for t in transforms):
        _IDENTITY_UPDATES.add(update)
    return GradientTransformation(init, update, split)


def apply_updates(params: Params, updates: Updates) -> dict[str, torch.Tensor]:
    """Return ``params + updates`` name by name, in the parameters' dtypes (the inputs are not modified).

    Parameters ``[*shape]`` with updates ``[K, *shape]`` broadcast to K candidate models.

    Returns:
        A new dict of tensors.
    """
    return tree_map(lambda p, u: p + u.to(p.dtype), params, updates)
