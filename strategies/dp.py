"""Differential privacy as strategy wrappers: client level (DP-FedAvg and DP-FedOpt) and sample level (DP-SGD).

The workers clip each client's update θ_i − θ (``fedsim.privacy.client_level.update_clipper``, every client
weighing 1); the wrapper adds Gaussian noise N(0, σ²C²) ONCE to the sum, divides by the expected cohort size s
(a fixed denominator: the noise scale does not reveal how many clients replied), and hands the negated mean to the
inner strategy's server optimizer. The cohort is drawn by Poisson sampling (each available client independently
with q = s/N) or as a fixed-size sample without replacement, as the scenario's ``privacy.sampling`` says, so
that the accountant's sampling assumption is what the engine did. With ``per_layer: adaptive`` the clip follows
a target quantile of the update norms (Andrew et al.).

With sample-level DP (``SampleLevelDP``) the clients run DP-SGD themselves; the wrapper only sends σ in every
round's config and puts ε so far and the clients' clipping diagnostics into the metrics.

The noise stream lives in the strategy's state (``DPState.noise``, a ``fedsim.gradcore.dp.GaussianNoiseState``), so a
checkpoint holds it; it starts from the generator the engine gives the wrapper: seeded by the OS CSPRNG unless the
scenario asks for an insecure seed (then reports say the run is not private).

References:
    McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018, arXiv 1710.06963;
    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, arXiv 1905.03871.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from fedsim.errors import ConfigError
from fedsim.gradcore import global_norm
from fedsim.gradcore.dp import GaussianNoiseState, add_gaussian_noise, gaussian_noise_state
from fedsim.privacy.client_level import adaptive_noise_split, next_adaptive_clip
from fedsim.protocol import NOISE_MULTIPLIER_KEY
from strategies.base import AggregateResult, Params, ReducedUpdates, RoundPlan, Strategy
from strategies.fedavg import FedAvg, sample_clients

if TYPE_CHECKING:
    from fedsim.privacy.plan import PrivacyPlan, Spend


class DPState(NamedTuple):
    """The inner strategy's state, the current clip bound C_t, the rounds done and the noise stream (so a
    checkpoint of the state holds the noise's randomness, and a resumed run draws what it would have drawn)."""

    inner: Any
    clip: float
    rounds: int
    noise: GaussianNoiseState


def poisson_sample(
    available: Sequence[int] | np.ndarray, q: float, rng: np.random.Generator
) -> tuple[int, ...]:
    """Each available client independently with probability ``q`` (sorted; possibly empty)."""
    avail = np.asarray(available, dtype=np.int64)
    return tuple(int(c) for c in np.sort(avail[rng.random(len(avail)) < q]))


@dataclass
class ClientLevelDP:
    """Clip on the workers, noise once on the sum, divide by the expected cohort; see the module docstring.

    Args:
        inner: the averaging strategy whose server optimizer takes the private mean (FedAvg family).
        population: N, the number of logical clients.
        noise_multiplier: σ of the whole mechanism (with adaptive clipping, split between update and count).
        clip: the initial (or fixed) L2 bound C on each client's update.
        generator: where the noise stream starts (the caller seeds it: CSPRNG, or the scenario seed when
            insecure); ``init`` copies its state into ``DPState.noise`` and never draws from it.
        sampling: ``poisson`` or ``fixed_size``.
        adaptive: clip follows a quantile (then ``target_quantile``, ``clip_lr``, ``count_noise`` apply).
        epsilon_at: ε spent after a round, per accountant, for the rounds it is known ({round: {acc: ε}}).
    """

    inner: FedAvg
    population: int
    noise_multiplier: float
    clip: float
    generator: torch.Generator
    sampling: str = "poisson"
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise: float | None = None
    epsilon_at: Mapping[int, Mapping[str, float]] = field(default_factory=dict)

    @property
    def cohort(self) -> int:
        """The expected cohort size s (the fixed denominator)."""
        return self.inner.clients_per_round

    @property
    def count_noise_std(self) -> float:
        """σ_b, the std of the noise on the unclipped-count (default s/20, Andrew et al.)."""
        return self.count_noise if self.count_noise is not None else self.cohort / 20.0

    @property
    def update_noise_multiplier(self) -> float:
        """σ_Δ: σ itself, or with adaptive clipping the share left for the update."""
        if not self.adaptive:
            return self.noise_multiplier
        return adaptive_noise_split(self.noise_multiplier, self.count_noise_std)

    def init(self, params: Params) -> DPState:
        return DPState(
            inner=self.inner.init(params),
            clip=float(self.clip),
            rounds=0,
            noise=gaussian_noise_state(self.generator),
        )

    def configure_round(
        self, state: DPState, *, round: int, available: Sequence[int] | np.ndarray, rng: np.random.Generator
    ) -> RoundPlan:
        if self.sampling == "poisson":
            ids = poisson_sample(available, self.cohort / self.population, rng)
        else:
            ids = sample_clients(available, self.cohort, rng)
        return RoundPlan(client_ids=ids, config={"clip": state.clip})

    def aggregate(self, state: DPState, params: Params, updates: ReducedUpdates) -> AggregateResult:
        """Noise the clipped sum once, divide by s, step the inner server optimizer, move an adaptive clip.

        Runs also when no client replied: the mechanism's output is then pure noise, as the accounting assumes.
        """
        keys = [k for k, v in params.items() if v.is_floating_point()]
        total = {k: updates.weighted_delta_sum[k].to(params[k].dtype) for k in keys}
        std = self.update_noise_multiplier * state.clip
        noised, noise = add_gaussian_noise(std).update(total, state.noise)
        s = float(self.cohort)
        delta = {k: -noised[k] / s for k in keys}
        result = self.inner.step(state.inner, params, delta)
        norms = np.asarray(updates.update_norms, dtype=np.float64)
        metrics: dict[str, float] = {
            **result.metrics,
            "dp_clip": state.clip,
            "dp_noise_std": std,
            "dp_noise_std_on_mean": std / s,
            "dp_clients": float(updates.num_clients),
            **clipping_stats(norms, state.clip),
            "dp_signal_to_noise": signal_to_noise(total, std),
        }
        new_clip = state.clip
        if self.adaptive:
            count = {"count": torch.tensor(centred_unclipped_count(norms, state.clip), dtype=torch.float64)}
            released, noise = add_gaussian_noise(self.count_noise_std).update(count, noise)
            noised_count = float(released["count"])
            new_clip = next_adaptive_clip(
                state.clip, noised_count / s + 0.5, target_quantile=self.target_quantile, lr=self.clip_lr
            )
        for acc, eps in self.epsilon_at.get(state.rounds + 1, {}).items():
            metrics[f"epsilon_{acc}"] = float(eps)
        return AggregateResult(
            params=result.params,
            state=DPState(inner=result.state, clip=new_clip, rounds=state.rounds + 1, noise=noise),
            metrics=metrics,
        )


CENTRED_COUNT_SENSITIVITY = 0.5
"""How far adding or removing one client moves ``centred_unclipped_count``: ½ whatever the client's bit (the
``dp_count_sensitivity`` every adaptive round records; tests/privacy/test_count_sensitivity.py measures it)."""


def centred_unclipped_count(norms: np.ndarray, clip: float) -> float:
    """Σ_i (b_i − ½) with b_i = 1[‖Δ_i‖ ≤ C]: the count adaptive clipping releases (with noise N(0, σ_b²)).

    Centred so that adding or removing one client moves it by exactly ½, whatever that client's bit: the pair
    (clipped sum, count) then has sensitivity (C, ½), and the split σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2) of
    ``adaptive_noise_split`` makes it cost what σ alone costs. The raw count Σ b_i moves by 1 when a client at
    norm ≤ C is added, which that split does not cover under Poisson sampling. Replacing one client (fixed-size
    cohorts) moves either count by at most 1 and the sum by 2C, which the same split also covers.

    References:
        Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, arXiv 1905.03871;
        TF-Privacy ``QuantileEstimatorQuery`` (``below_estimate = record <= estimate`` minus 0.5).
    """
    return float((np.asarray(norms, dtype=np.float64) <= clip).sum()) - 0.5 * len(norms)


def clipping_stats(norms: np.ndarray, clip: float) -> dict[str, float]:
    """Fraction of clients whose update was clipped and quantiles of the norms before clipping.

    These are simulation diagnostics: they are not privatised (a deployment would not release them).
    """
    if norms.size == 0:
        return {"dp_clipped_fraction": float("nan")}
    q = np.quantile(norms, [0.1, 0.5, 0.9])
    return {
        "dp_clipped_fraction": float((norms > clip).mean()),
        "dp_norm_p10": float(q[0]),
        "dp_norm_p50": float(q[1]),
        "dp_norm_p90": float(q[2]),
    }


def signal_to_noise(clipped_sum: Mapping[str, torch.Tensor], noise_std: float) -> float:
    """‖Σ clip(Δ_i)‖ / (σC·√d): the norm of the signal over the expected norm of the noise added to it."""
    d = sum(v.numel() for v in clipped_sum.values())
    if noise_std <= 0 or d == 0:
        return float("inf")
    return float(global_norm(clipped_sum)) / (noise_std * d**0.5)


def epsilon_every_round(spent: Spend) -> dict[int, dict[str, float]]:
    """ε so far for every round 1..T from a curve computed at some rounds (at most ~100 per run).

    Between two computed rounds a round gets the next computed value: ε only grows with rounds, so that is an
    upper bound on what was spent (exact at the computed rounds, which include every round when T <= 100).
    """
    out: dict[int, dict[str, float]] = {}
    prev = 0
    for i, r in enumerate(spent.rounds_at):
        point = {acc: float(spent.curve[acc][i]) for acc in spent.curve}
        for k in range(prev + 1, r + 1):
            out[k] = point
        prev = r
    return out


def client_level_dp(inner: Any, plan: PrivacyPlan, spent: Spend, generator: torch.Generator) -> ClientLevelDP:
    """Wrap ``inner`` (a FedAvg-family strategy) in client-level DP as ``plan`` resolved it from the scenario.

    Raises:
        ConfigError: the inner strategy has no server-optimizer step to hand the private mean to.
    """
    if not isinstance(inner, FedAvg):
        raise ConfigError(
            "strategy.name",
            "a FedAvg-family strategy (fedavg, fedavgm, fedadam, fedyogi) with privacy",
            inner,
        )
    cfg = plan.config
    epsilon_at = epsilon_every_round(spent)
    dp = ClientLevelDP(
        inner=inner,
        population=plan.population,
        noise_multiplier=plan.noise_multiplier,
        clip=cfg.clip,
        sampling=cfg.sampling,
        generator=generator,
        adaptive=cfg.per_layer == "adaptive",
        target_quantile=cfg.target_quantile,
        clip_lr=cfg.clip_learning_rate,
        count_noise=cfg.count_noise_multiplier,
        epsilon_at=epsilon_at,
    )
    if dp.adaptive:
        dp.update_noise_multiplier  # noqa: B018 - validates the noise split now, before any training
    return dp


class SampleDPState(NamedTuple):
    """The inner strategy's state and the rounds done."""

    inner: Any
    rounds: int


@dataclass
class SampleLevelDP:
    """Sample-level DP: clients run DP-SGD (σ travels in the round config); any inner strategy aggregates.

    The inner strategy sees only the clients' DP-SGD results, so whatever it does with them is post-processing.
    Its example-count weights use each client's dataset size, which sample-level DP treats as public (as Opacus
    does: it also sets the client's sampling rate and number of steps).
    """

    inner: Strategy
    noise_multiplier: float
    clip: float
    epsilon_at: Mapping[int, Mapping[str, float]] = field(default_factory=dict)

    def init(self, params: Params) -> SampleDPState:
        return SampleDPState(inner=self.inner.init(params), rounds=0)

    def configure_round(
        self,
        state: SampleDPState,
        *,
        round: int,
        available: Sequence[int] | np.ndarray,
        rng: np.random.Generator,
    ) -> RoundPlan:
        plan = self.inner.configure_round(state.inner, round=round, available=available, rng=rng)
        return RoundPlan(plan.client_ids, {**plan.config, NOISE_MULTIPLIER_KEY: float(self.noise_multiplier)})

    def aggregate(self, state: SampleDPState, params: Params, updates: ReducedUpdates) -> AggregateResult:
        result = self.inner.aggregate(state.inner, params, updates)
        metrics: dict[str, float] = {
            **result.metrics,
            "dp_clip": float(self.clip),
            "dp_noise_multiplier": float(self.noise_multiplier),
            "dp_clients": float(updates.num_clients),
            **example_clipping_stats(updates.client_stats),
        }
        for acc, eps in self.epsilon_at.get(state.rounds + 1, {}).items():
            metrics[f"epsilon_{acc}"] = float(eps)
        return AggregateResult(
            params=result.params,
            state=SampleDPState(inner=result.state, rounds=state.rounds + 1),
            metrics=metrics,
        )


def example_clipping_stats(client_stats: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Sample-level clipping diagnostics of a round from the clients' own (not privatised, simulation only):
    the mean fraction of example gradients clipped, quantiles over clients of their median example-gradient
    norm, and the mean signal-to-noise ratio of their noised sums."""
    out: dict[str, float] = {}

    def finite(name: str) -> np.ndarray:
        v = np.asarray(client_stats.get(name, ()), dtype=np.float64)
        return v[np.isfinite(v)]

    if (clipped := finite("clipped_fraction")).size:
        out["dp_clipped_fraction"] = float(clipped.mean())
    if (medians := finite("norm_p50")).size:
        q = np.quantile(medians, [0.1, 0.5, 0.9])
        out |= {"dp_norm_p10": float(q[0]), "dp_norm_p50": float(q[1]), "dp_norm_p90": float(q[2])}
    if (snr := finite("signal_to_noise")).size:
        out["dp_signal_to_noise"] = float(snr.mean())
    return out


def sample_level_dp(inner: Strategy, plan: PrivacyPlan, spent: Spend) -> SampleLevelDP:
    """Wrap ``inner`` for sample-level DP as ``plan`` resolved it (σ possibly calibrated)."""
    return SampleLevelDP(
        inner=inner,
        noise_multiplier=plan.noise_multiplier,
        clip=plan.config.clip,
        epsilon_at=epsilon_every_round(spent),
    )
