"""Stacks of K clients' tensors ``[K, ...]`` read and written row by row in their own memory order.

Why this module exists: the vectorised trainer keeps each stack in the layout its gradients come in (a linear
weight stack is stored transposed). An elementwise operation between such a stack and one client's tensor in
index order (the global parameters) walks one of them with a stride, several times slower than a contiguous
pass. These helpers view each client's block as one row in memory order and bring the single tensor into that
order once (it is small), so every pass over the stack is contiguous.
"""

from __future__ import annotations

import torch


def client_rows(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A ``[k, ...]`` stack as ``[k, P]`` rows, and the order of ``t``'s dimensions the rows' values follow.

    Without a copy whenever each client's values fill one block of memory in some order of the inner dimensions
    (a contiguous stack, or one laid out as its gradients, e.g. a transposed weight stack): row i then holds
    client i's values in memory order, and ``rows[i].view(t.permute(order).shape[1:]).permute(inverse)`` is
    ``t[i]``. Otherwise the rows are a contiguous copy in index order.
    """
    k = t.shape[0]
    if t.dim() > 2:
        order = (0, *sorted(range(1, t.dim()), key=lambda d: -t.stride(d)))
        permuted = t.permute(order)
        if permuted.is_contiguous():
            return permuted.view(k, -1), order
    return t.reshape(k, -1), tuple(range(t.dim()))


def weighted_row_sum(weights: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``Σ_i weights[i] · t[i]`` for a ``[k, ...]`` stack, one matrix-vector product over the stack's memory
    (no copy of a stack laid out as its gradients, see :func:`client_rows`)."""
    rows, order = client_rows(t)
    summed = (weights.to(t.dtype) @ rows).view([t.shape[d] for d in order[1:]])
    inverse = sorted(range(len(order) - 1), key=lambda j: order[j + 1])
    return summed.permute(inverse)


def in_row_order(one: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """One client's tensor flattened in the memory order ``order`` of a stack (from :func:`client_rows`)."""
    return one.permute([d - 1 for d in order[1:]]).reshape(-1)


def broadcast_into(stack: torch.Tensor, one: torch.Tensor) -> torch.Tensor:
    """Copy ``one`` into every client's row of ``stack`` (in place, any dense layout); returns ``stack``."""
    rows, order = client_rows(stack)
    if not _shares_memory(rows, stack):  # not a dense layout: the plain (strided) copy
        return stack.copy_(one.to(device=stack.device, dtype=stack.dtype).expand_as(stack))
    rows.copy_(in_row_order(one.to(device=stack.device, dtype=stack.dtype), order).unsqueeze(0).expand_as(rows))
    return stack


def subtract_from_rows(stack: torch.Tensor, one: torch.Tensor) -> torch.Tensor:
    """``stack - one`` for every client, computed in ``stack``'s memory (in place); returns ``stack``."""
    rows, order = client_rows(stack)
    if not _shares_memory(rows, stack):
        return stack.sub_(one.to(stack.dtype))
    rows.sub_(in_row_order(one.to(device=stack.device, dtype=stack.dtype), order).unsqueeze(0))
    return stack


def _shares_memory(view: torch.Tensor, base: torch.Tensor) -> bool:
    return view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()


