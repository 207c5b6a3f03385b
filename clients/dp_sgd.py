"""Sample-level DP (DP-SGD) for client training: per-example gradients, Opacus' clip-sum-noise-scale, and a reference.

Why this module exists: the privacy spec's sample-level DP clips every example's gradient to C and adds N(0, σ²C²)
per step "as Opacus does", on two paths: the sequential one through Opacus, the vectorised one through
``torch.func``. This module holds the vectorised parts — :func:`per_sample_grads` (``vmap(grad)`` over the examples
and, with ``batch_dims=1``, over a stacked ``[K, ...]`` cohort) and :func:`dp_sgd_aggregate` (Opacus' ``DPOptimizer``
aggregation written out: its clip factor, its noise draws, its mean scaling) — and :func:`opacus_private_grads`,
Opacus itself on one batch, so the two are tested against each other.

Matching Opacus 1.6 (``opacus/optimizers/optimizer.py``), step by step:

* clip: per-example norm = L2 norm of the per-tensor L2 norms, factor ``(C / (norm + 1e-6)).clamp(max=1)``
  (``clip_and_accumulate``), so a zero gradient stays zero and a gradient at norm C is scaled by ``C/(C+1e-6)``;
* sum: ``einsum`` of factors and per-example gradients over the example axis (masked examples get factor 0);
* noise: ``_generate_noise`` with ``secure_mode=False`` draws ``torch.normal(0, σC, <tensor shape>, generator=g)``
  in the tensor's dtype, one draw per tensor in the mapping's order (nothing drawn when σC = 0); both paths here
  draw it in float64 and cast (``draw_noise_in_float64`` patches the Opacus optimizer), because torch's float32
  sampler cuts the tail at 5.77σ;
* scale: divide by ``expected_batch_size`` (``scale_grad`` for ``loss_reduction="mean"``, one accumulated batch).

With a CPU generator and CPU tensors, a seed gives the same noise as Opacus for the same parameter order (the
order of ``model.named_parameters()``). Noise is drawn on the CPU and moved to the gradients' device, so CUDA
gradients take the same values as CPU ones (Opacus itself would draw on the device with a device generator).
"""

from __future__ import annotations

import copy
import math
import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedsim.gradcore.dp import gaussian_noise, secure_generator, seeded_generator

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(outputs, targets) -> scalar``, mean-reduced over a batch (a batch of one: the example's loss)."""

CLIP_EPS = 1e-6
"""Opacus' stabiliser in the clip factor ``C / (‖g‖ + 1e-6)`` (``DPOptimizer.clip_and_accumulate``)."""


def _check_batch_dims(batch_dims: int) -> None:
    if isinstance(batch_dims, bool) or batch_dims not in (0, 1):
        raise ValueError(f"batch_dims must be 0 or 1. Got {batch_dims!r}.")


def per_sample_grads(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn = nn.functional.cross_entropy,
    *,
    batch_dims: int = 0,
    return_losses: bool = False,
) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every example's gradient of its own loss: ``[B, *shape]`` per tensor (``[K, B, *shape]`` with a cohort).

    Each example is run as a batch of one through ``functional_call(model, params, ...)`` under
    ``vmap(grad(...))`` over the batch axis; with ``batch_dims=1`` a second ``vmap`` maps clients: ``params``
    stacked ``[K, *shape]``, ``x`` ``[K, B, ...]``, ``y`` ``[K, B]``. These are the ``grad_sample`` tensors Opacus'
    ``GradSampleModule`` computes for a mean-reduced loss. ``return_losses``: also every example's loss
    (``[B]`` or ``[K, B]``), from the same forward pass. The model's buffers are read, not mapped (models with
    BatchNorm are not per-example and Opacus rejects them too).

    Raises:
        ValueError: if ``batch_dims`` is not 0 or 1.

    References:
        Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, arXiv 1607.00133 (per-example
        gradients of DP-SGD); Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch",
        2021, arXiv 2109.12298.
    """
    _check_batch_dims(batch_dims)

    def example_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    fn = vmap(grad_and_value(example_loss), in_dims=(None, 0, 0))
    if batch_dims == 1:
        fn = vmap(fn, in_dims=(0, 0, 0))
    grads, losses = fn({name: p.detach() for name, p in params.items()}, x, y)
    return (grads, losses) if return_losses else grads


class PrivateGrads(NamedTuple):
    """:func:`dp_sgd_aggregate`'s result: the privatised gradients and every example's norm before clipping."""

    grads: dict[str, torch.Tensor]
    norms: torch.Tensor
    """``[B]`` (``[K, B]`` with a cohort); padding rows included (mask them out)."""
    clipped_sum_norm: torch.Tensor
    """‖Σ_i clip(g_i)‖ before the noise: a scalar, or ``[K]`` with a cohort (the signal of the signal-to-noise)."""


BATCH_SAMPLING_TAG, NOISE_TAG = 1, 2
"""Tags of a client's two DP-SGD random streams derived from its task seed (insecure mode only)."""


def client_dp_generators(seed: int, *, secure: bool) -> tuple[torch.Generator, torch.Generator]:
    """A client's (batch sampling, noise) CPU generators for one round of DP-SGD.

    ``secure``: both seeded by the OS CSPRNG (the batches, which amplification assumes secret, and the noise);
    else both derived from the task seed, so a run is reproducible and two paths can be compared draw for draw.
    """
    if secure:
        return secure_generator(), secure_generator()
    sampling, noise = (
        seeded_generator(int(np.random.SeedSequence([seed, tag]).generate_state(1, dtype=np.uint64)[0] >> 1))
        for tag in (BATCH_SAMPLING_TAG, NOISE_TAG)
    )
    return sampling, noise


def _is_cpu_generator(g: Any) -> bool:
    return isinstance(g, torch.Generator) and g.device.type == "cpu"


def _check_aggregate_args(
    grads: Mapping[str, torch.Tensor],
    max_norm: float,
    noise_multiplier: float,
    expected_batch_size: float | torch.Tensor,
    generator: Any,
    batch_dims: int,
) -> None:
    problems = []
    per_client_divisor = isinstance(expected_batch_size, torch.Tensor)
    checks = [("max_norm", max_norm, False), ("noise_multiplier", noise_multiplier, True)]
    if not per_client_divisor:
        checks.append(("expected_batch_size", expected_batch_size, False))
    for name, value, low_ok in checks:
        v = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        if not (0.0 <= v < math.inf if low_ok else 0.0 < v < math.inf):
            bound = "a finite number >= 0" if low_ok else "a positive finite number"
            problems.append(f"{name} must be {bound}. Got {value!r}.")
    if per_client_divisor and not bool(
        (torch.isfinite(expected_batch_size) & (expected_batch_size > 0)).all()
    ):
        problems.append(f"expected_batch_size must be positive and finite. Got {expected_batch_size!r}.")
    per_client_gen = isinstance(generator, Sequence)
    if per_client_gen:
        if not all(_is_cpu_generator(g) for g in generator):
            problems.append("generator must be CPU torch.Generators, one per client.")
    elif not _is_cpu_generator(generator):
        problems.append(f"generator must be a CPU torch.Generator. Got {generator!r}.")
    if isinstance(batch_dims, bool) or batch_dims not in (0, 1):
        problems.append(f"batch_dims must be 0 or 1. Got {batch_dims!r}.")
    elif batch_dims == 0 and (per_client_gen or per_client_divisor):
        problems.append("per-client generators or batch sizes need a cohort (batch_dims=1).")
    if not grads:
        problems.append("grads must hold at least one tensor. Got an empty mapping.")
    elif not problems and batch_dims == 1:
        k = next(iter(grads.values())).shape[0]
        if per_client_gen and len(generator) != k:
            problems.append(f"generator must be {k} generators (one per client). Got {len(generator)}.")
        if per_client_divisor and tuple(expected_batch_size.shape) != (k,):
            problems.append(
                f"expected_batch_size must have shape ({k},). Got {tuple(expected_batch_size.shape)}."
            )
    if problems:
        raise ValueError(" ".join(problems))


def dp_sgd_aggregate(
    grads: Mapping[str, torch.Tensor],
    *,
    mask: torch.Tensor | None,
    max_norm: float,
    noise_multiplier: float,
    expected_batch_size: float | torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator],
    batch_dims: int = 0,
) -> PrivateGrads:
    """Opacus' DP-SGD aggregate of per-example gradients: clip to C, sum, add N(0, σ²C²), divide by the batch size.

    ``grads`` are per-example gradients ``[B, *shape]`` (``[K, B, *shape]`` with ``batch_dims=1``: every client is
    clipped and summed on its own). ``mask`` (``[B]`` or ``[K, B]``, nonzero = real example) drops padding rows;
    masked rows must still be finite. Noise: for each tensor in ``grads``' order, ``torch.normal(0, σC,
    generator=...)`` draws on the CPU — with one generator, of the summed shape (``[*shape]``, or the whole
    ``[K, *shape]`` with a cohort, so a one-client stack draws exactly what the unstacked call draws); with one
    generator per client (a sequence of K), client k's ``[*shape]`` from its own generator, so each client gets
    exactly the noise Opacus would draw for it alone. ``expected_batch_size`` is one number or, with a cohort, a
    ``[K]`` tensor. The result's ``grads`` are ``(Σ_i clip(g_i) + noise) / expected_batch_size`` in the gradients' dtype, with
    every example's norm before clipping and ‖Σ clip(g_i)‖ for diagnostics; see
    the module docstring for how each step follows Opacus' ``DPOptimizer``.

    Raises:
        ValueError: if ``max_norm`` or ``expected_batch_size`` is not positive and finite, ``noise_multiplier``
            is not finite and >= 0, a generator is not a CPU ``torch.Generator`` (or a sequence of them is not
            one per client), ``batch_dims`` is not 0 or 1, ``grads`` is empty, or a tensor's or the mask's
            leading axes disagree.

    References:
        Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, arXiv 1607.00133; Yousefpour et al.,
        "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021, arXiv 2109.12298
        (``DPOptimizer.clip_and_accumulate`` / ``add_noise`` / ``scale_grad``).
    """
    _check_aggregate_args(grads, max_norm, noise_multiplier, expected_batch_size, generator, batch_dims)
    lead = next(iter(grads.values())).shape[: batch_dims + 1]  # client axes + the example axis
    for name, g in grads.items():
        if g.shape[: batch_dims + 1] != lead:
            raise ValueError(
                f"tensor {name!r} must have leading axes {tuple(lead)}. Got shape {tuple(g.shape)}."
            )
    if mask is not None and mask.shape != lead:
        raise ValueError(f"mask must have shape {tuple(lead)}. Got {tuple(mask.shape)}.")

    # Opacus: per-tensor norms over each example's elements, then the norm of those norms.
    per_tensor = [g.reshape(*lead, -1).norm(2, dim=-1) for g in grads.values()]
    norms = torch.stack(per_tensor, dim=-1).norm(2, dim=-1)
    factor = (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)
    if mask is not None:
        factor = torch.where(mask.to(factor.device) != 0, factor, torch.zeros_like(factor))

    std = float(noise_multiplier) * float(max_norm)
    out = {}
    signal_sq = torch.zeros(lead[:batch_dims], dtype=torch.float64, device=norms.device)
    for name, g in grads.items():
        f = factor.to(device=g.device, dtype=g.dtype)
        if batch_dims == 0:
            summed = torch.einsum("i,i...", f, g)  # Opacus' contraction, verbatim
        else:
            summed = torch.einsum("ki,kid->kd", f, g.reshape(*lead, -1)).reshape(lead[:1] + g.shape[2:])
        signal_sq += summed.reshape(*lead[:batch_dims], -1).double().pow(2).sum(-1).to(signal_sq.device)
        if std > 0.0:  # Opacus' _generate_noise draws nothing for std == 0
            summed = summed + _noise(std, summed, generator).to(summed.device)
        if isinstance(expected_batch_size, torch.Tensor):
            divisor = expected_batch_size.to(device=summed.device, dtype=summed.dtype)
            out[name] = summed / divisor.view(-1, *([1] * (summed.dim() - 1)))
        else:
            out[name] = summed / expected_batch_size
    return PrivateGrads(out, norms, signal_sq.sqrt())


def _noise(
    std: float, like: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]
) -> torch.Tensor:
    """Opacus' draw, in float64 (``gaussian_noise``) and cast to ``like``'s dtype: one for the whole tensor, or
    one per client from the client's own generator."""
    if isinstance(generator, torch.Generator):
        return gaussian_noise(like.shape, std, generator=generator).to(like.dtype)
    return torch.stack([gaussian_noise(like.shape[1:], std, generator=g).to(like.dtype) for g in generator])


def draw_noise_in_float64(optimizer: DPOptimizer) -> DPOptimizer:
    """Make an Opacus ``DPOptimizer`` draw its noise in float64 (then cast), in its own order; returns it.

    Opacus' non-secure ``_generate_noise`` draws in the gradient's dtype, and torch's float32 sampler cuts the
    Gaussian tail at 5.77σ (see ``fedsim.gradcore.dp.gaussian_noise``); this replaces the optimizer's
    ``add_noise`` with the same loop (one draw of each parameter's shape from ``optimizer.generator``, nothing
    drawn when σC = 0) on a float64 draw, so both DP-SGD paths add the same noise for a seed.
    """

    def add_noise() -> None:
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            ref = p.summed_grad
            noise = (
                torch.zeros_like(ref)
                if std == 0
                else gaussian_noise(ref.shape, std, generator=_generator_for(optimizer.generator, ref)).to(
                    device=ref.device, dtype=ref.dtype
                )
            )
            p.grad = (ref + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise  # type: ignore[method-assign]
    return optimizer


def _generator_for(generator: torch.Generator | None, ref: torch.Tensor) -> torch.Generator:
    """The optimizer's generator; without one (Opacus' default), a CSPRNG-seeded one on ``ref``'s device."""
    if generator is not None:
        return generator
    return torch.Generator(ref.device).manual_seed(secrets.randbits(63))


def opacus_private_grads(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: torch.Generator,
    loss_fn: LossFn = nn.functional.cross_entropy,
) -> dict[str, torch.Tensor]:
    """The reference: the privatised gradient Opacus' ``DPOptimizer`` would apply for one batch, by parameter name.

    A deep copy of ``model`` (the caller's module gets no hooks and no ``.grad``) is wrapped in
    ``GradSampleModule(loss_reduction="mean")``; its ``SGD`` is wrapped in ``DPOptimizer(loss_reduction="mean",
    generator=generator, secure_mode=False)``; one forward/backward of ``loss_fn(model(x), y)`` and
    ``optimizer.pre_step()`` (clip, accumulate, noise, scale) leave the result in ``p.grad``, which is returned
    before any weight update (no ``step``: reading ``p.grad`` is exact, while a ``θ - lr·g`` difference would round).
    The ``PrivacyEngine`` is not used: it would only add the Poisson data loader and the accountant, and for one
    given batch these two objects are what it builds.

    References:
        Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021,
        arXiv 2109.12298.
    """
    module = copy.deepcopy(model)
    gsm = GradSampleModule(module, batch_first=True, loss_reduction="mean")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = DPOptimizer(
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=generator,
        secure_mode=False,
    )
    draw_noise_in_float64(optimizer)
    optimizer.zero_grad()
    with warnings.catch_warnings():  # inputs never require grad here; the hook still sees every layer
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        loss_fn(gsm(x), y).backward()
    optimizer.pre_step()
    out = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    gsm.remove_hooks()
    return out
