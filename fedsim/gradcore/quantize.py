"""8-bit block-wise quantised optimizer states: any stateful transform, with its moments stored in uint8.

Why this module exists: Adam's two fp32 moments cost 8 bytes per parameter, twice the model itself; a worker that
keeps persistent per-client optimizer states (or stacks many clients in one vectorised cohort) runs out of memory
on the states first. Dettmers et al. store each state tensor as uint8 codes into a 256-entry non-linear "dynamic
tree" map, scaled by one fp32 absmax per block of 256 values (2 + 4/256 bytes per value), and run the update in
fp32: dequantise -> fp32 update -> requantise, every step. ``quantized_state(inner)`` does this for ANY gradcore
transform, so 8-bit Adam, 8-bit momentum SGD, 8-bit Yogi... are one wrapper around the fp32 chains.

Pure PyTorch (nearest code by ``torch.bucketize`` on the map's midpoints), so it runs on CPU and GPU alike. With
``batch_dims=1`` (a stacked ``[K, ...]`` cohort) blocks are cut from each client's trailing elements separately and
never straddle clients, and the size threshold is per client: the stacked result equals each client run alone.

Which tensors are quantised: the float tensors of the inner state that sit in a dict under a parameter's name and
have that parameter's shape (``mu[name]``, ``nu[name]``, ``trace[name]``) and at least ``min_size`` elements per
client (4096, as bitsandbytes' ``min_8bit_size``); step counters, scalars and small tensors stay as they are.
Which map: the name of the nearest enclosing state field decides: a field in ``unsigned`` (default ``{"nu"}``,
the second moments of Adam/Yogi, which are non-negative) uses the unsigned map; every other field (first
moments ``mu``, momentum ``trace``, ...) the signed map. A field that can be negative must not be listed in
``unsigned`` (its negative values would be stored as 0).

References:
    Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR 2022,
    arXiv 2110.02861; bitsandbytes (``bitsandbytes.functional.create_dynamic_map``, ``quantize_blockwise``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import torch

from fedsim.gradcore.base import GradientTransformation, OptState, Params, Updates

BLOCK_SIZE = 256
"""Values per absmax block (bitsandbytes' 8-bit optimizers since 0.44; the paper used 2048)."""
MIN_8BIT_SIZE = 4096
"""Tensors with fewer elements (per client) keep fp32 state, as bitsandbytes' ``min_8bit_size``."""
UNSIGNED_FIELDS = frozenset({"nu"})
"""State fields stored with the unsigned map by default (non-negative second moments)."""


class QuantizedTensor(NamedTuple):
    """A block-wise quantised tensor: ``codes`` (uint8, the original shape) and one fp32 ``absmax`` per block
    (shape ``[*client_dims, n_blocks]``)."""

    codes: torch.Tensor
    absmax: torch.Tensor


class QuantizedState(NamedTuple):
    """The inner transform's state with its large parameter-shaped float tensors as ``QuantizedTensor``s."""

    inner: OptState


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The sorted 256-entry dynamic tree map of Dettmers (2016), value for value as bitsandbytes builds it.

    Each decade ``10^(i - max_exponent_bits + 1)`` holds the midpoints of an even split of ``[0.1, 1]`` (twice as
    many when unsigned, mirrored to negative values when signed), plus the values 0 and 1. Signed: ``[-0.99297, 1]``;
    unsigned: ``[0, 1]``.

    Returns:
        A sorted float32 tensor of 256 values (``2**total_bits`` distinct ones, zero-padded, as bitsandbytes).

    Raises:
        ValueError: if the settings do not give ``2**total_bits`` values (bitsandbytes asserts the same).

    References:
        Dettmers, "8-Bit Approximations for Parallelism in Deep Learning", ICLR 2016, arXiv 1511.04561;
        bitsandbytes ``bitsandbytes.functional.create_dynamic_map``.
    """
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        n = 2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1)) + 1
        data += _decade(10 ** (-(max_exponent_bits - 1) + i), n, signed)
    if additional_items > 0:
        data += _decade(
            1.0, additional_items + 1, signed
        )  # bitsandbytes reuses the last decade's scale, 10^0
    data += [0.0, 1.0]
    if len(data) != 2**total_bits:
        raise ValueError(f"the map must have 2**total_bits = {2**total_bits} values. Got {len(data)}.")
    data += [0.0] * (256 - len(data))  # as bitsandbytes: always 256 entries, padded with zeros
    return torch.tensor(sorted(data), dtype=torch.float32)


def _decade(scale: float, n_bounds: int, signed: bool) -> list[float]:
    """``scale`` times the midpoints of ``n_bounds`` even points on ``[0.1, 1]`` (and their negatives), computed in
    float32 as bitsandbytes does."""
    bounds = torch.linspace(0.1, 1, n_bounds, dtype=torch.float32)
    means = (bounds[:-1] + bounds[1:]) / 2.0
    return (scale * means).tolist() + ((-scale * means).tolist() if signed else [])


@functools.cache
def _cached_map(signed: bool, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The map and its midpoints, built once per (signedness, device)."""
    qmap = create_dynamic_map(signed).to(device)
    return qmap, (qmap[1:] + qmap[:-1]) / 2


def dynamic_map(signed: bool, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(map, midpoints)`` of the signed / unsigned dynamic map on ``device``; the midpoints are the
    ``torch.bucketize`` boundaries of the nearest-code rule."""
    return _cached_map(signed, str(torch.device(device)))


def _blocks(x: torch.Tensor, block_size: int, batch_dims: int) -> torch.Tensor:
    """``x`` as ``[*client_dims, n_blocks, block_size]`` in float32, zero-padded at each client's end."""
    lead = x.shape[:batch_dims]
    flat = x.reshape(*lead, -1).to(torch.float32)
    pad = -flat.shape[-1] % block_size
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(*lead, -1, block_size)


def quantize_blockwise(
    x: torch.Tensor, *, signed: bool, block_size: int = BLOCK_SIZE, batch_dims: int = 0
) -> QuantizedTensor:
    """Block-wise 8-bit quantisation: per block ``absmax = max|x|``, code = the map entry nearest ``x / absmax``.

    Blocks are cut from the trailing ``x.dim() - batch_dims`` axes (flattened), one set per client. A block of
    zeros has absmax 0 and decodes to zeros.

    References:
        Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022, arXiv 2110.02861.
    """
    qmap, mids = dynamic_map(signed, x.device)
    blocks = _blocks(x, block_size, batch_dims)
    absmax = blocks.abs().amax(dim=-1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    codes = torch.bucketize(blocks / safe.unsqueeze(-1), mids).to(torch.uint8)
    n = math.prod(x.shape[batch_dims:])
    codes = codes.reshape(*x.shape[:batch_dims], -1)[..., :n].reshape(x.shape)
    return QuantizedTensor(codes=codes, absmax=absmax)


def dequantize_blockwise(
    q: QuantizedTensor, *, signed: bool, block_size: int = BLOCK_SIZE, batch_dims: int = 0
) -> torch.Tensor:
    """The float32 tensor ``map[code] * absmax`` of a ``QuantizedTensor`` (inverse of ``quantize_blockwise``).

    References:
        Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022, arXiv 2110.02861.
    """
    qmap, _ = dynamic_map(signed, q.codes.device)
    values = _blocks(qmap[q.codes.long()], block_size, batch_dims) * q.absmax.unsqueeze(-1)
    n = math.prod(q.codes.shape[batch_dims:])
    return values.reshape(*q.codes.shape[:batch_dims], -1)[..., :n].reshape(q.codes.shape)


def _map_state(
    state: Any, fn: Callable[[Any, str, str | None], Any], field: str = "", key: str | None = None
) -> Any:
    """Rebuild a state tree, applying ``fn(leaf, field, dict_key)`` to every tensor / ``QuantizedTensor`` leaf;
    ``field`` is the nearest enclosing NamedTuple field name, ``dict_key`` the key of the enclosing dict."""
    if isinstance(state, (torch.Tensor, QuantizedTensor)):
        return fn(state, field, key)
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(_map_state(v, fn, f) for f, v in zip(state._fields, state, strict=True)))
    if isinstance(state, dict):
        return {k: _map_state(v, fn, field, k) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(_map_state(v, fn, field) for v in state)
    return state


def quantized_state(
    inner: GradientTransformation,
    *,
    batch_dims: int = 0,
    block_size: int = BLOCK_SIZE,
    min_size: int = MIN_8BIT_SIZE,
    unsigned: Collection[str] = UNSIGNED_FIELDS,
) -> GradientTransformation:
    """``inner`` with its parameter-shaped float state tensors kept as 8-bit block-wise codes between steps.

    Each step dequantises the state to fp32, runs ``inner.update`` (whose output uses the fresh fp32 state) and
    requantises the new state. Quantised: float tensors in a dict under a parameter name with that parameter's
    shape and at least ``min_size`` elements per client; map: unsigned for fields in ``unsigned``, else signed
    (see the module docstring). ``batch_dims=1``: per-client blocks and thresholds.

    Raises:
        ValueError: if ``block_size`` or ``min_size`` is not positive.

    References:
        Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022, arXiv 2110.02861.
    """
    if block_size <= 0 or min_size <= 0:
        raise ValueError(f"block_size and min_size must be positive. Got {block_size} and {min_size}.")
    unsigned = frozenset(unsigned)
    kw = {"block_size": block_size, "batch_dims": batch_dims}

    def compress(state: OptState, like: Params) -> QuantizedState:
        def one(x: Any, field: str, key: str | None) -> Any:
            ref = like.get(key) if key is not None else None
            if (
                isinstance(x, torch.Tensor)
                and ref is not None
                and x.is_floating_point()
                and x.shape == ref.shape
                and math.prod(x.shape[batch_dims:]) >= min_size
            ):
                return quantize_blockwise(x, signed=field not in unsigned, **kw)
            return x

        return QuantizedState(_map_state(state, one))

    def expand(state: QuantizedState) -> OptState:
        def one(x: Any, field: str, key: str | None) -> Any:
            if isinstance(x, QuantizedTensor):
                return dequantize_blockwise(x, signed=field not in unsigned, **kw)
            return x

        return _map_state(state.inner, one)

    def init(params: Params) -> QuantizedState:
        return compress(inner.init(params), params)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], QuantizedState]:
        out, new_inner = inner.update(updates, expand(state), params)
        return out, compress(new_inner, updates)

    return GradientTransformation(init, update)


def state_bytes(state: OptState) -> int:
    """Bytes held by the tensors of an optimizer state (codes, absmax, moments, counters), e.g. for benchmarks:
    Adam's two moments cost 8 B/param in fp32 and ``2 + 8/256 = 2.03`` B/param through ``quantized_state``."""
    total = 0

    def count(x: Any, field: str, key: str | None) -> Any:
        nonlocal total
        for t in x if isinstance(x, QuantizedTensor) else (x,):
            total += t.numel() * t.element_size()
        return x

    _map_state(state, count)
    return total
