"""Client-level DP mechanics: the clipping a worker applies to each client's update, and the server's noise.

Why this module exists: the DP-FedAvg recipe (clip each client's update, sum, add Gaussian noise once, divide by
the expected cohort size) is split between the worker (clipping, inside the vectorised path too) and the server
(noise and the adaptive clip). Both halves are gradient-core transforms; this module only puts them together from
the scenario's settings, so the worker and the report agree on what was done.

References:
    McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018, arXiv 1710.06963;
    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, arXiv 1905.03871;
    Pelikan et al., "Federated Learning with Differential Privacy for End-to-End Speech Recognition", 2023,
    arXiv 2310.00098.
"""

from __future__ import annotations

import math

from fedsim import gradcore
from fedsim.errors import ConfigError
from fedsim.gradcore import GradientTransformation
from fedsim.gradcore.dp import clip_layers_independent, clip_layers_pelikan

CLIP_MODES = ("global", "adaptive", "independent", "uniform", "dimension")


def clip_mode(per_layer: str | None) -> str:
    """The worker's clipping mode for the scenario's ``privacy.per_layer`` (null = one global bound)."""
    return "global" if per_layer is None else per_layer


def update_clipper(
    max_norm: float, mode: str, *, layer_split: str = "uniform", batch_dims: int = 0
) -> GradientTransformation:
    """The clipping of ``mode``; every mode leaves a total norm <= max_norm.

    ``global`` and ``adaptive`` clip the whole update to ``max_norm`` (adaptive moves ``max_norm`` between rounds);
    ``independent`` bounds each layer by its share of ``max_norm`` (``layer_split``); ``uniform`` and
    ``dimension`` are Pelikan et al.'s rule. ``normalize_layers`` (when on) runs before this, on the worker, so
    the clipping statistics see the norms the clip sees.
    """
    if mode in ("global", "adaptive"):
        return gradcore.clip_by_global_norm(max_norm, batch_dims=batch_dims)
    if mode == "independent":
        return clip_layers_independent(max_norm, rule=layer_split, batch_dims=batch_dims)
    if mode in ("uniform", "dimension"):
        return clip_layers_pelikan(max_norm, rule=mode, batch_dims=batch_dims)
    raise ValueError(f"clipping mode must be one of {', '.join(CLIP_MODES)}. Got {mode!r}.")


def adaptive_noise_split(noise_multiplier: float, count_noise_multiplier: float) -> float:
    """σ_Δ for the update when the clipped-count also gets noise σ_b, so the pair costs what σ alone costs.

    σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2) (Andrew et al., Theorem 1); needs 2σ_b > σ. It holds for the *centred* count
    Σ(b_i − ½) (``strategies.dp.centred_unclipped_count``), which one client moves by ½ under add/remove.

    Raises:
        ConfigError: if the count noise is too small for σ (the split would need an infinite σ_Δ).
    """
    rest = noise_multiplier**-2 - (2.0 * count_noise_multiplier) ** -2
    if rest <= 0:
        raise ConfigError(
            "privacy.count_noise_multiplier",
            f"> noise_multiplier/2 = {noise_multiplier / 2:g} for adaptive clipping (default: clients_per_round/20)",
            count_noise_multiplier,
        )
    return 1.0 / math.sqrt(rest)


def next_adaptive_clip(
    clip: float, noisy_fraction_unclipped: float, *, target_quantile: float, lr: float
) -> float:
    """Geometric update of the clip toward the target quantile: C ← C·exp(−η (b̄ − γ)) (Andrew et al., eq. 2)."""
    return clip * math.exp(-lr * (noisy_fraction_unclipped - target_quantile))
