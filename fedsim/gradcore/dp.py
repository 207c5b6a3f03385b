"""Client-level DP mechanisms as gradient transforms: per-layer clipping modes, layer normalisation, Gaussian noise.

Why this module exists: DP-FedAvg clips every client's update to a total L2 norm of at most C (the sensitivity of
the sum) and adds N(0, σ²C²) once to the sum. The global mode is ``clip_by_global_norm``; this module holds the
per-layer modes of the privacy spec (``independent`` and Pelikan et al.'s ``uniform`` / ``dimension``), their
layer-wise normalisation, and the noise, so a worker and the server build the mechanism from the same parts. Every
clipping transform takes ``batch_dims`` (the leading client axes of ``fedsim.gradcore.base``): a stacked ``[K, ...]``
cohort is clipped per client in one call, exactly as a loop over its clients would.

Numerics: "layer" means one tensor (``L`` counts tensors; ``d_l`` is a tensor's element count per client). Layer
norms are accumulated and the layers rescaled in float64 and cast back, so a float32 entry as small as 1e-45 or as
large as 3e38 neither underflows nor overflows when squared, and Pelikan's scale-up of a tiny layer is exact. No
function divides by a zero norm: an all-zero update stays exactly zero.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import NamedTuple

import torch

from fedsim.gradcore.base import GradientTransformation, Params, Updates, expand_left, stateless

RULES = ("uniform", "dimension")
"""How C² is shared between layers: equally (``C_l = C/√L``) or by size (``C_l = C·√(d_l/d)``)."""


def _positive_finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not 0.0 < v < math.inf:
        raise ValueError(f"{name} must be a positive finite number. Got {value!r}.")
    return v


def _check_layout(rule: str | None, batch_dims: int) -> None:
    if rule is not None and rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}. Got {rule!r}.")
    if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or batch_dims < 0:
        raise ValueError(f"batch_dims must be an integer >= 0. Got {batch_dims!r}.")


def _layer_norms(updates: Updates, batch_dims: int) -> dict[str, torch.Tensor]:
    """Each tensor's L2 norm over its axes after the first ``batch_dims``, in float64 (shape: the client axes)."""
    out = {}
    for name, x in updates.items():
        if x.dim() < batch_dims:
            raise ValueError(
                f"tensor {name!r} must have at least {batch_dims} axes. Got shape {tuple(x.shape)}."
            )
        axes = tuple(range(batch_dims, x.dim()))
        out[name] = (
            torch.linalg.vector_norm(x, dim=axes, dtype=torch.float64) if axes else x.abs().to(torch.float64)
        )
    return out


def _total(norms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The global norm from the layer norms: ``√(Σ_l ‖Δ_l‖²)``, per client."""
    return torch.stack([n.square() for n in norms.values()]).sum(dim=0).sqrt()


def _layer_bounds(updates: Updates, max_norm: float, rule: str, batch_dims: int) -> dict[str, float]:
    """``C_l`` per tensor, with ``Σ_l C_l² = C²``."""
    if rule == "uniform":
        return {name: max_norm / math.sqrt(len(updates)) for name in updates}
    sizes = {name: math.prod(x.shape[batch_dims:]) for name, x in updates.items()}
    total = sum(sizes.values())
    return {name: max_norm * math.sqrt(d / total) if total else 0.0 for name, d in sizes.items()}


def _rescale(updates: Updates, factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``u * factor`` per tensor, multiplied in float64 (a scale-up factor may exceed the dtype's range)."""
    out = {}
    for name, u in updates.items():
        wide = u.to(torch.promote_types(u.dtype, torch.float64))
        out[name] = (wide * expand_left(factors[name], wide)).to(u.dtype)
    return out


def clip_layers_independent(
    max_norm: float, *, rule: str = "uniform", batch_dims: int = 0
) -> GradientTransformation:
    """True per-layer clipping: ``Δ_l ← Δ_l · min(1, C_l / ‖Δ_l‖)`` with ``Σ_l C_l² = C²``, so ``‖Δ‖ ≤ C``.

    ``rule="uniform"``: ``C_l = C/√L``; ``rule="dimension"``: ``C_l = C·√(d_l/d)``. The factor is 1 where
    ``‖Δ_l‖ ≤ C_l`` (a zero layer stays zero), per client with ``batch_dims=1``.

    Raises:
        ValueError: if ``max_norm`` is not a positive finite number or ``rule`` is unknown.

    References:
        McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018, arXiv 1710.06963
        (per-layer clipping with Σ C_l² = C²).
    """
    max_norm = _positive_finite("max_norm", max_norm)
    _check_layout(rule, batch_dims)

    def fn(updates: Updates, params: Params | None) -> dict[str, torch.Tensor]:
        del params
        norms, bounds = _layer_norms(updates, batch_dims), _layer_bounds(updates, max_norm, rule, batch_dims)
        factors = {
            n: torch.where(norms[n] > bounds[n], bounds[n] / norms[n].clamp_min(1e-300), 1.0) for n in updates
        }
        return _rescale(updates, factors)

    return stateless(fn)


def clip_layers_pelikan(
    max_norm: float, *, rule: str = "uniform", batch_dims: int = 0
) -> GradientTransformation:
    """Pelikan et al.'s per-layer rule: unchanged while ``‖Δ‖ < C``; once ``‖Δ‖ ≥ C`` every layer gets norm ``C_l``.

    ``C_l = C/√L`` (``rule="uniform"``) or ``C·√(d_l/d)`` (``rule="dimension"``), so a small layer is scaled *up*
    and the total norm after is exactly C. A layer that is exactly zero has no direction to scale: it stays zero
    (as the reference's ``g / (‖g‖ + 1e-10)`` leaves it), and the total is then below C. Per client with
    ``batch_dims=1``.

    Raises:
        ValueError: if ``max_norm`` is not a positive finite number or ``rule`` is unknown.

    References:
        Pelikan et al., "Federated Learning with Differential Privacy for End-to-End Speech Recognition", 2023,
        arXiv 2310.00098 (code apple/ml-pfl4asr, ``clip_layer_grads`` / ``clip_layer_grads_params``).
    """
    max_norm = _positive_finite("max_norm", max_norm)
    _check_layout(rule, batch_dims)

    def fn(updates: Updates, params: Params | None) -> dict[str, torch.Tensor]:
        del params
        if not updates:
            return {}
        norms, bounds = _layer_norms(updates, batch_dims), _layer_bounds(updates, max_norm, rule, batch_dims)
        over = _total(norms) >= max_norm
        factors = {
            n: torch.where(over & (norms[n] > 0), bounds[n] / norms[n].clamp_min(1e-300), 1.0)
            for n in updates
        }
        return _rescale(updates, factors)

    return stateless(fn)


def normalize_layers(*, batch_dims: int = 0) -> GradientTransformation:
    """Scale every layer to unit L2 norm (a zero layer stays zero); run it before clipping.

    After it, every non-zero layer contributes equally, whatever its gradient scale; the total norm is ``√L``
    (fewer for zero layers), so the clip that follows decides the sensitivity.

    References:
        Pelikan et al., "Federated Learning with Differential Privacy for End-to-End Speech Recognition", 2023,
        arXiv 2310.00098 (layer-wise normalisation).
    """
    _check_layout(None, batch_dims)

    def fn(updates: Updates, params: Params | None) -> dict[str, torch.Tensor]:
        del params
        norms = _layer_norms(updates, batch_dims)
        return _rescale(
            updates, {n: torch.where(v > 0, 1.0 / v.clamp_min(1e-300), 1.0) for n, v in norms.items()}
        )

    return stateless(fn)


class GaussianNoiseState(NamedTuple):
    """The noise stream of ``add_gaussian_noise``: a CPU ``torch.Generator``'s state (``get_state()``, uint8)."""

    rng: torch.Tensor


def gaussian_noise_state(generator: torch.Generator) -> GaussianNoiseState:
    """A noise state that continues ``generator``'s stream from where it is (a copy: the generator is not used).

    Raises:
        ValueError: if ``generator`` is not a CPU ``torch.Generator``.
    """
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator. Got {generator!r}.")
    return GaussianNoiseState(generator.get_state())


def add_gaussian_noise(stddev: float, *, seed: int | None = None) -> GradientTransformation:
    """Add i.i.d. ``N(0, stddev²)`` to every element of every tensor: the Gaussian mechanism on a clipped sum.

    The randomness is the transform's state (optax's habit): ``init`` starts a CPU generator from ``seed``
    (``seeded_generator``: reproducible, NOT private) or, when ``seed`` is None, from the OS CSPRNG
    (``secure_generator``, for real runs), and keeps its state in a ``GaussianNoiseState``; ``update`` resumes
    the stream from the state it is given and returns the advanced state. Checkpointing the state
    (``torch.save``) therefore captures the noise stream: resuming from it draws exactly what an uninterrupted
    run would have drawn. ``gaussian_noise_state`` makes a state that continues an existing generator.

    The noise is drawn in float64 (:func:`gaussian_noise`), tensor by tensor in the updates' order, each tensor's
    noise in one draw of its full shape (client axes included), then added in float64, cast to the tensor's dtype
    and moved to its device. ``stddev=0`` returns the updates and the state unchanged (nothing is drawn).

    Raises:
        ValueError: if ``stddev`` is not a finite number >= 0 or ``seed`` is not an integer in ``[0, 2**64)``; at
            update time, for a state that is not a ``GaussianNoiseState`` or a tensor that is not floating point.

    References:
        Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014 (the Gaussian mechanism);
        McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018, arXiv 1710.06963;
        Babuschkin et al., "The DeepMind JAX Ecosystem", 2020 (optax ``add_noise``: the RNG key in the state).
    """
    try:
        sigma = float(stddev)
    except (TypeError, ValueError):
        sigma = math.nan
    if not 0.0 <= sigma < math.inf:
        raise ValueError(f"stddev must be a finite number >= 0. Got {stddev!r}.")
    if seed is not None:
        seeded_generator(seed)  # validates now, not at init

    def init(params: Params) -> GaussianNoiseState:
        del params
        return gaussian_noise_state(secure_generator() if seed is None else seeded_generator(seed))

    def update(
        updates: Updates, state: GaussianNoiseState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], GaussianNoiseState]:
        del params
        if not isinstance(state, GaussianNoiseState):
            raise ValueError(f"state must be a GaussianNoiseState (from init). Got {type(state).__name__}.")
        if sigma == 0.0:
            return dict(updates), state
        generator = torch.Generator()
        generator.set_state(state.rng)
        out = {}
        for name, u in updates.items():
            if not u.is_floating_point():
                raise ValueError(f"tensor {name!r} must be floating point to take noise. Got {u.dtype}.")
            noised = u.detach().to("cpu", torch.float64) + gaussian_noise(u.shape, sigma, generator=generator)
            out[name] = noised.to(device=u.device, dtype=u.dtype)
        return out, GaussianNoiseState(generator.get_state())

    return GradientTransformation(init, update)


def gaussian_noise(
    shape: Sequence[int] | torch.Size, stddev: float, *, generator: torch.Generator
) -> torch.Tensor:
    """``N(0, stddev²)`` of ``shape``, drawn in float64 from ``generator`` on its device (cast it afterwards).

    Why float64: torch's float32 CPU sampler (tensors of >= 16 elements) is Box–Muller on 24-bit uniforms, so
    every draw has ``|z| <= √(48 ln 2) ≈ 5.77``; that cut-off tail costs δ. In float64 the uniforms have 53 bits
    (``at::uniform_real_distribution<double>``), the bound is ``√(106 ln 2) ≈ 8.57`` and the report adds the
    (negligible) remaining term (``fedsim.privacy.accounting.truncation_delta``).

    References:
        PyTorch ``aten/src/ATen/native/cpu/DistributionTemplates.h`` (``normal_fill``, ``normal_fill_16``).
    """
    return torch.normal(
        0.0,
        float(stddev),
        size=tuple(shape),
        generator=generator,
        dtype=torch.float64,
        device=generator.device,
    )


def secure_generator() -> torch.Generator:
    """A CPU generator seeded with 63 bits from the OS CSPRNG (``secrets.randbits``): the seed for real DP runs.

    The seed is unpredictable, but the stream is torch's Mersenne Twister, not a cryptographic generator (Opacus'
    ``secure_mode`` uses torchcsprng for that), and floating-point Gaussian samples have known side channels.

    References:
        Mironov, "On Significance of the Least Significant Bits For Differential Privacy", CCS 2012.
    """
    return torch.Generator().manual_seed(secrets.randbits(63))


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed: reproducible noise, NOT private (the report says "insecure seed").

    Raises:
        ValueError: if ``seed`` is not an integer in ``[0, 2**64)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64). Got {seed!r}.")
    return torch.Generator().manual_seed(seed)
