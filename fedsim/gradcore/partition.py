"""Different transforms for different layers: route each parameter to a chain by its label (its role or name).

Why this module exists: SCALE, SWAN, SinkGD, LANTON and AGVM treat weight matrices, the output layer, embeddings
and vectors (biases, norms) differently, and "last layer only" variants of any transform are common. Labels are
fixed when the optimizer is built (from the model, where the roles are known), not guessed in ``init``, so they
mean the same with or without a leading client dimension.

Roles (``param_roles``): ``matrix`` (weights with 2 or more dims), ``output`` (the last such weight: the head),
``embedding`` (named by the caller), ``vector`` (1-D: biases, norm scales).

References:
    Babuschkin et al., "The DeepMind JAX Ecosystem" (optax ``multi_transform`` / ``masked``), 2020.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch

from fedsim.gradcore.base import GradientTransformation, OptState, Params, Updates, identity

ROLES = ("matrix", "output", "embedding", "vector")


class PartitionState(NamedTuple):
    """The state of each label's transform (over that label's parameters only)."""

    inner: dict[str, OptState]


def param_roles(params: Params, *, embeddings: Iterable[str] = (), client_dims: int = 0) -> dict[str, str]:
    """The role of every parameter: ``vector`` (1-D), ``embedding`` (named), ``output`` (the last matrix),
    else ``matrix``. ``client_dims`` leading dims are not counted (1 for stacked cohorts)."""
    emb = set(embeddings)
    roles = {}
    for name, p in params.items():
        roles[name] = "embedding" if name in emb else ("vector" if p.dim() - client_dims <= 1 else "matrix")
    matrices = [n for n, r in roles.items() if r == "matrix"]
    if matrices:
        roles[matrices[-1]] = "output"
    return roles


def partition(
    transforms: Mapping[str, GradientTransformation], labels: Mapping[str, str]
) -> GradientTransformation:
    """Apply ``transforms[labels[name]]`` to each parameter ``name``; the outputs keep the input order.

    Raises:
        KeyError: a parameter without a label, or a label without a transform (at ``init``).
    """

    def split(tree: Params | None, label: str) -> dict[str, torch.Tensor] | None:
        if tree is None:
            return None
        return {n: t for n, t in tree.items() if labels[n] == label}

    def init(params: Params) -> PartitionState:
        missing = [n for n in params if n not in labels]
        if missing:
            raise KeyError(f"partition: no label for parameters {missing}")
        unknown = sorted({labels[n] for n in params} - set(transforms))
        if unknown:
            raise KeyError(f"partition: no transform for labels {unknown} (have {sorted(transforms)})")
        used = {labels[n] for n in params}
        return PartitionState(
            {lab: transforms[lab].init(split(params, lab)) for lab in transforms if lab in used}
        )

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], PartitionState]:
        out: dict[str, torch.Tensor] = {}
        new_inner = {}
        for lab, inner_state in state.inner.items():
            part, new_inner[lab] = transforms[lab].update(
                split(updates, lab), inner_state, split(params, lab)
            )
            out.update(part)
        return {n: out[n] for n in updates}, PartitionState(new_inner)

    return GradientTransformation(init, update)


def masked(inner: GradientTransformation, select: Iterable[str], labels: Mapping[str, str] | None = None):
    """Apply ``inner`` only to the selected parameters (by name, or by role when ``labels`` maps names to roles);
    the others pass through unchanged. E.g. ``masked(clip, ["output"], param_roles(params))``: last layer only."""
    chosen = set(select)
    roles = dict(labels or {})

    def routed(names: Iterable[str]) -> GradientTransformation:
        on = {n: "on" if n in chosen or roles.get(n) in chosen else "off" for n in names}
        return partition({"on": inner, "off": identity()}, on)

    def init(params: Params) -> OptState:
        return routed(params).init(params)

    def update(updates: Updates, state: OptState, params: Params | None = None):
        return routed(updates).update(updates, state, params)

    return GradientTransformation(init, update)
