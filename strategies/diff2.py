"""DIFF2-GD's server recursion, Ray-free and Flower-free: the mathematical core of issue 9, and DP-GD beside it.

Why this module exists: DIFF2 keeps a running gradient estimate v built from clipped, noised *differences* of
per-example gradients between consecutive iterates. A difference is small when the iterates move little, so its
clip radius C2·‖x_{r−1} − x_{r−2}‖, and the noise scaled to it, are small too; every T rounds the estimate restarts
from a clipped, noised full gradient. This module holds that recursion over P clients' per-example gradients
(callables ``x -> [n_p, d]``) with the project's clip (``clip_by_global_norm``) and noise
(``add_gaussian_noise``) transforms, the DP-GD baseline, and the sequence of Gaussian mechanisms a run releases so
the project's accountants can compose it. The engine strategy (clients on workers keeping x_{r−2}) is not here.

The recursion (``/work/shared/specs/strategies.md``, "DIFF2"; the paper's Algorithm 1 with the GD routine)::

    ClippedMean_p({g_z}, C) = (1/n_p) Σ_z g_z · min(1, C/‖g_z‖)              (‖g_z‖ = 0 and C = 0 give 0)
    round r, if (r − 1) mod T == 0 (restart; r = 1, T+1, 2T+1, ...):
        v_r = (1/P) Σ_p [ClippedMean_p(∇ℓ(x_{r−1}; z), C1) + N(0, (σ1·C1/n_p)² I)]
    else:  C2,r = C2·‖x_{r−1} − x_{r−2}‖
        v_r = v_{r−1} + (1/P) Σ_p [ClippedMean_p(∇ℓ(x_{r−1}; z) − ∇ℓ(x_{r−2}; z), C2,r) + N(0, (σ2·C2,r/n_p)² I)]
    x_r = x_{r−1} − η·v_r

Choices made here, not confirmed from the paper's text (it could not be read in this session; see
``docs/diff2.md``): σ1, σ2 are *noise multipliers* (noise std over the L2 sensitivity C/n_p of client p's clipped
mean under add/remove-one-example adjacency with public n_p); each client adds its own noise before the server
averages (so each message is private on its own; the noise std on v_r is √(Σ_p (σC/n_p)²)/P); a difference round
with a zero step has C2,r = 0, releases exactly 0 and costs no privacy; the output is the whole iterate sequence
(the paper's output rule is left to the caller). Restarts follow the spec's ``(r − 1) mod T == 0``.

Privacy: given the public past iterates, round r is one Gaussian mechanism with noise multiplier σ1 (restart) or
σ2 (difference), q = 1; the rounds compose adaptively. ``privacy_mechanisms`` lists them and ``epsilon_rdp``
composes them (one ``fedsim.privacy.accounting.Mechanism`` per distinct σ, RDP added across them).

References:
    Murata & Suzuki, "DIFF2: Differential Private Optimization via Gradient Differences for Nonconvex Distributed
    Learning", ICML 2023, arXiv 2302.03884 (Algorithm 1, DIFF2 with the GD routine);
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, arXiv 1607.00133 (DP-GD/DP-SGD);
    Mironov, "Rényi Differential Privacy", CSF 2017, arXiv 1702.07476 (composition).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from opacus.accountants import RDPAccountant

from fedsim.errors import ConfigError
from fedsim.gradcore.clipping import clip_by_global_norm
from fedsim.gradcore.dp import add_gaussian_noise
from fedsim.privacy.accounting import Mechanism, validate_delta

PerExampleGrads = Callable[[torch.Tensor], torch.Tensor]
"""One client's per-example gradients: ``x`` shaped ``[d]`` -> ``[n_p, d]`` (``n_p >= 1``, same dtype as ``x``)."""

RESTART = "restart"
DIFFERENCE = "difference"


def _number(key: str, value: Any, expected: str, ok: Callable[[float], bool]) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or not ok(value):
        raise ConfigError(f"strategy.args.{key}", expected, value)
    return float(value)


@dataclass(frozen=True)
class Diff2Config:
    """DIFF2-GD's settings, validated on construction (errors name ``strategy.args.<key>``).

    Args:
        lr: η > 0, the GD step.
        restart_every: T >= 1 (T = 1 is DP-GD).
        clip1: C1 > 0, the per-example clip at restarts (``math.inf``: no clipping, only with σ1 = 0).
        clip2: C2 > 0, the per-example clip of differences per unit of step norm (``math.inf`` as ``clip1``).
        noise_multiplier1: σ1 >= 0, noise std over the sensitivity C1/n_p at restarts.
        noise_multiplier2: σ2 >= 0, noise std over the sensitivity C2,r/n_p in difference rounds.
    """

    lr: float
    restart_every: int
    clip1: float
    clip2: float
    noise_multiplier1: float = 0.0
    noise_multiplier2: float = 0.0

    def __post_init__(self) -> None:
        _number("lr", self.lr, "a finite number > 0", lambda v: 0 < v < math.inf)
        t = self.restart_every
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 1:
            raise ConfigError("strategy.args.restart_every", "an integer >= 1", t)
        for i in (1, 2):
            clip = _number(
                f"clip{i}", getattr(self, f"clip{i}"), "a number > 0 (inf: no clipping)", lambda v: v > 0
            )
            sigma = _number(
                f"noise_multiplier{i}",
                getattr(self, f"noise_multiplier{i}"),
                "a finite number >= 0",
                lambda v: 0 <= v < math.inf,
            )
            if sigma > 0 and clip == math.inf:
                raise ConfigError(
                    f"strategy.args.clip{i}",
                    f"finite when noise_multiplier{i} > 0 (noise scales with it)",
                    clip,
                )


class Diff2State(NamedTuple):
    """Rounds done, x_{r−1} (current), x_{r−2} (``None`` before round 2) and v_{r−1} (``None`` before round 1)."""

    round: int
    x: torch.Tensor
    x_prev: torch.Tensor | None
    v: torch.Tensor | None


class RoundInfo(NamedTuple):
    """What round ``round`` released: its kind, clip radius (C1 or C2,r), noise multiplier, noise std on v_r."""

    round: int
    kind: str
    radius: float
    noise_multiplier: float
    noise_std: float


def clipped_mean(grads: torch.Tensor, radius: float) -> torch.Tensor:
    """(1/n) Σ_z g_z · min(1, radius/‖g_z‖) over the rows of ``grads`` ``[n, d]``; radius 0 gives exact zeros.

    ``radius = inf`` is the plain mean. A zero row stays zero (``clip_by_global_norm`` never divides by 0).
    """
    if radius == 0.0:
        return torch.zeros(grads.shape[1:], dtype=grads.dtype, device=grads.device)
    if radius == math.inf:
        return grads.mean(dim=0)
    clipped, _ = clip_by_global_norm(radius, batch_dims=1).update({"g": grads}, None)
    return clipped["g"].mean(dim=0)


def private_mean(
    grads: Sequence[torch.Tensor], radius: float, noise_multiplier: float, *, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """(1/P) Σ_p [ClippedMean_p(grads_p, radius) + N(0, (σ·radius/n_p)² I)] and the noise std on the result.

    Client p's noise is drawn from ``generator`` in client order (one draw of shape ``[d]`` each; none when its
    std is 0). Returns the mean and √(Σ_p (σ·radius/n_p)²)/P.
    """
    total = None
    var = 0.0
    for g in grads:
        std = 0.0 if noise_multiplier == 0.0 or radius == 0.0 else noise_multiplier * radius / g.shape[0]
        msg, _ = add_gaussian_noise(std, generator=generator).update({"m": clipped_mean(g, radius)}, None)
        total = msg["m"] if total is None else total + msg["m"]
        var += std**2
    if total is None:
        raise ValueError("clients must hold at least one client. Got none.")
    return total / len(grads), math.sqrt(var) / len(grads)


def init(x0: torch.Tensor) -> Diff2State:
    """The state before round 1 (``x0`` is copied, never modified)."""
    return Diff2State(round=0, x=x0.detach().clone(), x_prev=None, v=None)


def step(
    cfg: Diff2Config, state: Diff2State, clients: Sequence[PerExampleGrads], *, generator: torch.Generator
) -> tuple[Diff2State, RoundInfo]:
    """One DIFF2-GD round r = ``state.round + 1`` (the recursion in the module docstring)."""
    r = state.round + 1
    x = state.x
    if (r - 1) % cfg.restart_every == 0 or state.v is None or state.x_prev is None:
        kind, radius, sigma = RESTART, float(cfg.clip1), float(cfg.noise_multiplier1)
        v, std = private_mean([fn(x) for fn in clients], radius, sigma, generator=generator)
    else:
        kind, sigma = DIFFERENCE, float(cfg.noise_multiplier2)
        move = float(torch.linalg.vector_norm(x - state.x_prev))
        radius = 0.0 if move == 0.0 else cfg.clip2 * move  # inf · 0 would be NaN
        diffs = [fn(x) - fn(state.x_prev) for fn in clients]
        delta, std = private_mean(diffs, radius, sigma, generator=generator)
        v = state.v + delta
    new = Diff2State(round=r, x=x - cfg.lr * v, x_prev=x, v=v)
    return new, RoundInfo(round=r, kind=kind, radius=radius, noise_multiplier=sigma, noise_std=std)


class Trace(NamedTuple):
    """A run: iterates x_0..x_R, estimates v_1..v_R, and what each round released."""

    iterates: list[torch.Tensor]
    estimates: list[torch.Tensor]
    rounds: list[RoundInfo]


def run_diff2(
    cfg: Diff2Config,
    x0: torch.Tensor,
    clients: Sequence[PerExampleGrads],
    rounds: int,
    *,
    generator: torch.Generator,
) -> Trace:
    """``rounds`` rounds of DIFF2-GD from ``x0``."""
    state = init(x0)
    trace = Trace([state.x], [], [])
    for _ in range(rounds):
        state, info = step(cfg, state, clients, generator=generator)
        trace.iterates.append(state.x)
        trace.estimates.append(state.v)
        trace.rounds.append(info)
    return trace


def run_dp_gd(
    x0: torch.Tensor,
    clients: Sequence[PerExampleGrads],
    rounds: int,
    *,
    lr: float,
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> Trace:
    """The DP-GD baseline: x_r = x_{r−1} − η·(1/P) Σ_p [ClippedMean_p(∇ℓ(x_{r−1}; z), C) + N(0, (σC/n_p)² I)].

    Written as its own loop (not through ``step``) so that DIFF2 with T = 1 can be tested against it.
    """
    Diff2Config(lr=lr, restart_every=1, clip1=clip, clip2=clip, noise_multiplier1=noise_multiplier)
    x = x0.detach().clone()
    trace = Trace([x], [], [])
    for r in range(1, rounds + 1):
        v, std = private_mean(
            [fn(x) for fn in clients], float(clip), float(noise_multiplier), generator=generator
        )
        x = x - lr * v
        trace.iterates.append(x)
        trace.estimates.append(v)
        trace.rounds.append(RoundInfo(r, RESTART, float(clip), float(noise_multiplier), std))
    return trace


def privacy_mechanisms(cfg: Diff2Config, rounds: int) -> list[RoundInfo]:
    """The Gaussian mechanism of every round 1..``rounds`` (radius: C1, or C2 per unit step), from ``cfg`` alone.

    Counts every difference round, also one whose step turns out zero (it releases 0 and costs nothing), so
    the list is data-independent and ε from it an upper bound. ``noise_std`` is per unit sensitivity (= σ).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 1:
        raise ConfigError("rounds", "an integer >= 1", rounds)
    out = []
    for r in range(1, rounds + 1):
        if (r - 1) % cfg.restart_every == 0:
            out.append(
                RoundInfo(r, RESTART, float(cfg.clip1), float(cfg.noise_multiplier1), cfg.noise_multiplier1)
            )
        else:
            out.append(
                RoundInfo(
                    r, DIFFERENCE, float(cfg.clip2), float(cfg.noise_multiplier2), cfg.noise_multiplier2
                )
            )
    return out


def composed_mechanisms(cfg: Diff2Config, rounds: int) -> list[Mechanism]:
    """One ``Mechanism`` (q = 1, Poisson/add-remove) per distinct σ with its count of rounds, validated.

    Raises:
        ConfigError: naming ``strategy.args.noise_multiplier1``/``2`` when a round that releases data has σ = 0.
    """
    counts: dict[float, int] = {}
    for info in privacy_mechanisms(cfg, rounds):
        if info.noise_multiplier <= 0:
            key = "noise_multiplier1" if info.kind == RESTART else "noise_multiplier2"
            raise ConfigError(f"strategy.args.{key}", "> 0 for a finite epsilon", info.noise_multiplier)
        counts[info.noise_multiplier] = counts.get(info.noise_multiplier, 0) + 1
    return [Mechanism(noise_multiplier=s, sample_rate=1.0, steps=k) for s, k in counts.items()]


def epsilon_rdp(cfg: Diff2Config, rounds: int, delta: float) -> float:
    """ε(δ) of ``rounds`` rounds by RDP: the mechanisms of ``composed_mechanisms`` added in opacus' RDP accountant.

    With one distinct σ this is ``fedsim.privacy.accounting.epsilon("rdp", mech, delta)`` exactly.
    """
    validate_delta(delta)
    accountant = RDPAccountant()
    accountant.history = [
        (m.noise_multiplier, m.sample_rate, m.steps) for m in composed_mechanisms(cfg, rounds)
    ]
    return float(accountant.get_epsilon(delta))
