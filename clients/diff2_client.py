"""A DIFF2 / DP-GD client round on a worker: per-example gradients (or gradient differences) of the squared loss on
every local example, clipped per example, averaged per client and summed over the worker's clients.

Why this module exists: DIFF2-GD (``strategies.diff2``) needs, every round, each client's ClippedMean of its
examples' gradients at x_{r−1} (restart rounds) or of their differences ∇ℓ(x_{r−1}; z) − ∇ℓ(x_{r−2}; z) (difference
rounds). The worker computes them here, vectorised over examples with ``torch.func.vmap(grad_and_value(...))`` in
chunks, clips each row with ``fedsim.gradcore.clipping.clip_by_global_norm`` and returns one reduced sum for all its
clients (the server adds the noise once). No Flower types here: ``fedsim.engine.worker`` does the messages and
the node state.

The loss is the squared loss ℓ(x; (a, y)) = (h_x(a) − y)² of a one-output model h (regression); the parameter
vector x is the model's floating-point state in ``state_dict`` order, flattened (:func:`flat_spec`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from clients.dp_sgd import per_sample_grads
from fedsim.data import FederatedData
from fedsim.gradcore.clipping import clip_rows

CHUNK_ROWS = 4096
"""Examples whose gradients are stacked at once (bounded memory on large clients)."""


@dataclass(frozen=True)
class FlatSpec:
    """Names and shapes of the parameters a flat iterate x covers, in order."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def flat_spec(model: nn.Module) -> FlatSpec:
    """The model's floating-point ``state_dict`` entries, in order (a model with buffers is not supported)."""
    state = model.state_dict()
    params = dict(model.named_parameters())
    if set(state) != set(params):
        raise ValueError(
            f"a model without buffers is needed for DIFF2. Got buffers {sorted(set(state) - set(params))}."
        )
    return FlatSpec(tuple(state), tuple(v.shape for v in state.values()))


def flatten(params: dict[str, torch.Tensor], spec: FlatSpec) -> torch.Tensor:
    """x = the parameters concatenated in ``spec`` order."""
    return torch.cat([params[n].reshape(-1) for n in spec.names])


def unflatten(x: torch.Tensor, spec: FlatSpec) -> dict[str, torch.Tensor]:
    """The parameters of a flat x (views into it)."""
    out, start = {}, 0
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        n = math.prod(shape)
        out[name] = x[start : start + n].view(shape)
        start += n
    return out


def squared_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ℓ = (h(a) − y)² for one example (``out`` ``[1, 1]``, ``y`` ``[1]``)."""
    return ((out.reshape(-1) - y) ** 2).sum()


def per_example_grads(
    model: nn.Module, spec: FlatSpec, x: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇ℓ(x; z) for every row z, flat ``[n, d]``; ℓ(x; z) ``[n]``) for the squared loss, in one vmap
    (``clients.dp_sgd.per_sample_grads``, as DP-SGD's)."""
    grads, losses = per_sample_grads(
        model, unflatten(x, spec), inputs, targets, loss_fn=squared_loss, return_losses=True
    )
    return torch.cat([grads[n].reshape(len(inputs), -1) for n in spec.names], dim=1), losses


@dataclass
class ClientSums:
    """Σ over the kept clients of ClippedMean_p, of mean_z ∇ℓ(x_{r−1}; z) and of mean_z ℓ(x_{r−1}; z); rows clipped
    of all their rows; the kept clients (``client_ids``, with ``num_examples``) and the ones left out because
    their contribution was not finite (``failed``)."""

    clipped_sum: torch.Tensor
    grad_sum: torch.Tensor
    loss_sum: float
    clipped_rows: int
    rows: int
    num_examples: list[int]
    client_ids: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def diff2_round(
    model: nn.Module,
    data: FederatedData,
    client_ids: Sequence[int],
    *,
    x: torch.Tensor,
    x_prev: torch.Tensor | None,
    radius: float,
    chunk_rows: int = CHUNK_ROWS,
    nonfinite: Collection[int] = (),
) -> ClientSums:
    """The clients' part of a DIFF2 round at x = x_{r−1}: restart when ``x_prev`` is None, else differences
    against x_prev = x_{r−2}. Every client's examples are all used (full batch).

    A client whose contribution (clipped mean, gradient mean or mean loss) is not finite adds nothing and is
    listed in ``failed``; the clients in ``nonfinite`` (``faults.nonfinite``) have theirs replaced by NaN once
    computed, so the same check drops them."""
    spec = flat_spec(model)
    device = data.train_x.device
    x = x.to(device)
    x_prev = None if x_prev is None else x_prev.to(device)
    zero = torch.zeros(spec.size, dtype=x.dtype, device=device)
    clipped_sum, grad_sum, loss_sum, clipped_rows, rows, sizes = zero.clone(), zero.clone(), 0.0, 0, 0, []
    kept: list[int] = []
    failed: list[int] = []
    for cid in client_ids:
        inputs, targets = data.client_data(int(cid))
        n = len(inputs)
        if n == 0:
            raise ValueError(f"client {cid} has no training examples; DIFF2 needs every client to have some")
        c_sum, g_sum, l_sum, k_sum = zero.clone(), zero.clone(), 0.0, 0
        for start in range(0, n, chunk_rows):
            a, y = inputs[start : start + chunk_rows], targets[start : start + chunk_rows]
            g, losses = per_example_grads(model, spec, x, a, y)
            g_sum += g.sum(dim=0)
            l_sum += float(losses.sum())
            if x_prev is not None:
                g = g - per_example_grads(model, spec, x_prev, a, y)[0]
            c, k = clip_rows(g, radius)
            c_sum += c.sum(dim=0)
            k_sum += k
        if int(cid) in nonfinite:  # faults.nonfinite: the contribution comes back NaN
            c_sum = torch.full_like(c_sum, float("nan"))
        finite = bool(torch.isfinite(c_sum).all() and torch.isfinite(g_sum).all()) and math.isfinite(l_sum)
        if not finite:
            failed.append(int(cid))
            continue
        clipped_sum += c_sum / n
        grad_sum += g_sum / n
        loss_sum += l_sum / n
        clipped_rows += k_sum
        rows += n
        sizes.append(n)
        kept.append(int(cid))
    return ClientSums(clipped_sum, grad_sum, loss_sum, clipped_rows, rows, sizes, kept, failed)
