"""Types the engine passes between the server loop, the Flower boundary and the cohort trainers.

It lives below the strategies and the engine (docs/architecture.md, Layers) so that both can import it: the DP
wrapper reads its σ key. It imports neither flwr nor ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ClientClip:
    """Client-level DP on the worker: how each client's update θ_i − θ is clipped before it is summed.

    ``mode``: ``global`` (one L2 bound over the whole update; also ``adaptive``, whose bound the server moves each
    round), ``independent`` (a bound per layer, split by ``layer_split``), ``uniform`` / ``dimension`` (Pelikan et
    al.'s rule). With clipping on, every client weighs 1 in the sum (the server divides by the expected cohort).
    """

    max_norm: float
    mode: str = "global"
    layer_split: str = "uniform"
    normalize_layers: bool = False


NOISE_MULTIPLIER_KEY = "dp_noise_multiplier"
"""Round-config key: σ of sample-level DP-SGD (the server resolves it, e.g. calibrated for a target ε, and the
strategy wrapper sends it every round)."""


@dataclass(frozen=True)
class SampleDP:
    """Sample-level DP on the worker: every client trains with DP-SGD (``clients.dp_sgd``).

    Each example's gradient is clipped to ``max_norm``, the sum gets N(0, σ²C²) noise every step, batches are
    Poisson samples (``fedsim.privacy.sample_level.LocalSchedule``). ``secure``: the batch sampling and the noise
    come from generators seeded by the OS CSPRNG; else from the client's task seed (``privacy.insecure_seed``).
    """

    max_norm: float
    noise_multiplier: float
    secure: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """How every client of a round trains locally (from the scenario's ``client`` block)."""

    epochs: int
    batch_size: int
    optimizer: str
    optimizer_args: Mapping[str, Any] = field(default_factory=dict)
    memory_budget_bytes: int | None = None
    """How much the vectorised trainer may stack at once on this worker (None: no limit)."""
    clip: ClientClip | None = None
    """Client-level DP clipping of each client's update (None: no clipping, example-weighted sum)."""
    sample_dp: SampleDP | None = None
    """Sample-level DP: DP-SGD on every client (None: plain local training)."""


@dataclass(frozen=True)
class ClientTask:
    """One logical client to train this round, with its own seed (shuffling, dropout, ...).

    ``weight``/``group`` (event-driven strategies): the client's update is summed with weight ``weight`` (instead
    of its number of examples) into the sum of its ``group`` (clients that arrive at the same server step), so a
    worker can train clients together that the server will use at different steps.

    ``nonfinite`` (``faults.nonfinite``, set by the worker from ``fedsim.faults``, never sent): the client trains,
    then its new parameters become NaN, so the cohort trainer's finiteness check drops it into ``failed``.
    """

    cid: int
    seed: int
    weight: float | None = None
    group: int | None = None
    nonfinite: bool = False


@dataclass
class WorkerResult:
    """A worker's reply for one round: the reduced sum over its clients plus per-client facts.

    ``weighted_delta_sum`` is Σ_i n_i (θ_i − θ) over the clients that succeeded (with clipping:
    Σ_i clip(θ_i − θ), every weight 1); ``failed`` lists clients whose update was unusable (e.g. non-finite) and
    were left out.
    """

    weighted_delta_sum: dict[str, torch.Tensor]
    weight_sum: float
    client_ids: list[int]
    num_examples: list[int]
    train_loss: list[float]
    failed: list[int]
    train_s: float = 0.0
    """Wall seconds the worker spent training (the rest of a round trip is dispatch and transport)."""
    update_norms: list[float] = field(default_factory=list)
    """With clipping: the norm the clip saw for each kept client (its update's, or after layer normalisation), in
    ``client_ids`` order (for the clipping statistics of the privacy report and the adaptive clipping count)."""
    group_sums: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    """With grouped tasks: Σ_i w_i (θ_i − θ) per group (``weighted_delta_sum`` is then their total)."""
    client_stats: dict[str, list[float]] = field(default_factory=dict)
    """Per-client diagnostics by name, each in ``client_ids`` order (sample-level DP: the fraction of example
    gradients clipped, their median norm, the signal-to-noise ratio of the noised sums)."""
