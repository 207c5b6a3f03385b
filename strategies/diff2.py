"""DIFF2-GD's server recursion, Ray-free and Flower-free: the mathematical core of issue 9, DP-GD beside it, and
the typed strategy objects the engine runs (``diff2``, ``dp_gd``).

Why this module exists: DIFF2 keeps a running gradient estimate v built from clipped, noised *differences* of
per-example gradients between consecutive iterates. A difference is small when the iterates move little, so its
clip radius C2·‖x_{r−1} − x_{r−2}‖, and the noise scaled to it, are small too; every T rounds the estimate restarts
from a clipped, noised full gradient. This module holds that recursion over P clients' per-example gradients
(callables ``x -> [n_p, d]``) with the project's clip (``clip_by_global_norm``) and noise (``add_gaussian_noise``)
transforms, the DP-GD baseline, and the sequence of Gaussian mechanisms a run releases so the project's
accountants can compose it. A round is split in two (``plan_round``, ``finish_round``) so that the engine
(``fedsim.engine.diff2_loop``), whose clients compute their clipped means on workers, runs the same server math.

The equations used (the paper's Algorithm 1 with the GD routine, as summarised in ``docs/diff2.md``), with the
noise placed once on the aggregate at the server (central DP)::

    ClippedMean_p({g_z}, C) = (1/n_p) Σ_z g_z · min(1, C/‖g_z‖)              (‖g_z‖ = 0 and C = 0 give 0)
    round r, if (r − 1) mod T == 0 (restart; r = 1, T+1, 2T+1, ...):
        v_r = (1/P) Σ_p ClippedMean_p(∇ℓ(x_{r−1}; z), C1) + N(0, (σ1·C1/(P·n_min))² I)
    else:  C2,r = C2·‖x_{r−1} − x_{r−2}‖
        v_r = v_{r−1} + (1/P) Σ_p ClippedMean_p(∇ℓ(x_{r−1}; z) − ∇ℓ(x_{r−2}; z), C2,r)
                      + N(0, (σ2·C2,r/(P·n_min))² I)
    x_r = x_{r−1} − η·v_r

Sensitivity: under zero-out adjacency (one example's gradient replaced by zero; each client's size n_p public and
fixed, so the divisor does not move), one example moves (1/P)·ClippedMean_p by at most C/(P·n_p) ≤ C/(P·n_min),
n_min the smallest client. Adding or removing an example would change n_p as well and move the mean by up to
2C/(P·(n_p + 1)): that relation needs twice the noise and is not the one fedsim reports (``privacy.json``
states ``adjacency``). So σ1, σ2 are *noise multipliers* (noise std over that L2
sensitivity), and, given the public past iterates, every round is one Gaussian mechanism with noise multiplier σ1
(restart) or σ2 (difference) and q = 1; the rounds compose adaptively. A difference round with a zero step has
C2,r = 0, releases exactly 0 and draws no noise; ``privacy_mechanisms`` still counts it (a data-independent upper
bound). The output is the whole iterate sequence (the paper's output rule is left to the caller). Restarts follow
the spec's ``(r − 1) mod T == 0``.

References:
    Murata & Suzuki, "DIFF2: Differential Private Optimization via Gradient Differences for Nonconvex Distributed
    Learning", ICML 2023, arXiv 2302.03884 (Algorithm 1, DIFF2 with the GD routine);
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, arXiv 1607.00133 (DP-GD/DP-SGD);
    Mironov, "Rényi Differential Privacy", CSF 2017, arXiv 1702.07476 (composition).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch

from fedsim.errors import ConfigError
from fedsim.gradcore.clipping import clip_rows
from fedsim.gradcore.dp import add_gaussian_noise, gaussian_noise_state
from fedsim.privacy import FULL_BATCH_STRATEGIES

if TYPE_CHECKING:  # the accountants cost seconds to import: only DP-GD's accounting needs them
    from fedsim.privacy.accounting import Mechanism
    from fedsim.privacy.plan import FullBatchSettings

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
        noise_multiplier1: σ1 >= 0, noise std over the sensitivity C1/(P·n_min) at restarts.
        noise_multiplier2: σ2 >= 0, noise std over the sensitivity C2,r/(P·n_min) in difference rounds.
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

    def kind(self, round: int) -> str:
        """``RESTART`` when (round − 1) mod T == 0, else ``DIFFERENCE``."""
        return RESTART if (round - 1) % self.restart_every == 0 else DIFFERENCE


class Diff2State(NamedTuple):
    """Rounds done, x_{r−1} (current), x_{r−2} (``None`` before round 2) and v_{r−1} (``None`` before round 1)."""

    round: int
    x: torch.Tensor
    x_prev: torch.Tensor | None
    v: torch.Tensor | None


class Diff2Round(NamedTuple):
    """What the clients compute in round ``round``: its kind and the per-example clip radius (C1 or C2,r)."""

    round: int
    kind: str
    radius: float
    noise_multiplier: float


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
    return clip_rows(grads, radius)[0].mean(dim=0)


def noise_std(noise_multiplier: float, radius: float, *, clients: int, min_examples: int) -> float:
    """σ·radius/(P·n_min): the noise std on the mean of P clipped means (0 when σ or the radius is 0)."""
    if noise_multiplier == 0.0 or radius == 0.0:
        return 0.0
    return noise_multiplier * radius / (clients * min_examples)


def noised_mean(
    clipped_mean_sum: torch.Tensor,
    *,
    clients: int,
    min_examples: int,
    radius: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """(1/P)·Σ_p ClippedMean_p + N(0, std² I), std = ``noise_std(...)``, drawn from ``generator`` in one draw of
    shape ``[d]`` (none when std is 0). Returns the result and std."""
    std = noise_std(noise_multiplier, radius, clients=clients, min_examples=min_examples)
    noise = add_gaussian_noise(std)
    out, after = noise.update({"v": clipped_mean_sum / clients}, gaussian_noise_state(generator))
    generator.set_state(after.rng)  # the caller's generator carries the stream on to the next round
    return out["v"], std


def private_mean(
    grads: Sequence[torch.Tensor], radius: float, noise_multiplier: float, *, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """(1/P) Σ_p ClippedMean_p(grads_p, radius) + N(0, (σ·radius/(P·n_min))² I) and that noise std."""
    if not grads:
        raise ValueError("grads must hold at least one client. Got none.")
    total = clipped_mean(grads[0], radius)
    for g in grads[1:]:
        total = total + clipped_mean(g, radius)
    return noised_mean(
        total,
        clients=len(grads),
        min_examples=min(g.shape[0] for g in grads),
        radius=radius,
        noise_multiplier=noise_multiplier,
        generator=generator,
    )


def init(x0: torch.Tensor) -> Diff2State:
    """The state before round 1 (``x0`` is copied, never modified)."""
    return Diff2State(round=0, x=x0.detach().clone(), x_prev=None, v=None)


def plan_round(cfg: Diff2Config, state: Diff2State) -> Diff2Round:
    """Round r = ``state.round + 1``: restart (radius C1) or difference (radius C2·‖x_{r−1} − x_{r−2}‖)."""
    r = state.round + 1
    if cfg.kind(r) == RESTART or state.v is None or state.x_prev is None:
        return Diff2Round(r, RESTART, float(cfg.clip1), float(cfg.noise_multiplier1))
    move = float(torch.linalg.vector_norm(state.x - state.x_prev))
    radius = 0.0 if move == 0.0 else cfg.clip2 * move  # inf · 0 would be NaN
    return Diff2Round(r, DIFFERENCE, radius, float(cfg.noise_multiplier2))


def finish_round(
    cfg: Diff2Config,
    state: Diff2State,
    plan: Diff2Round,
    clipped_mean_sum: torch.Tensor,
    *,
    clients: int,
    min_examples: int,
    generator: torch.Generator,
) -> tuple[Diff2State, RoundInfo]:
    """The server's half of a round: noise the mean of the clients' clipped means once, update v and x.

    ``clipped_mean_sum`` is Σ_p ClippedMean_p of the round's per-example gradients (restart) or gradient
    differences (difference round) at radius ``plan.radius``, over ``clients`` = P clients, the smallest holding
    ``min_examples``.
    """
    delta, std = noised_mean(
        clipped_mean_sum,
        clients=clients,
        min_examples=min_examples,
        radius=plan.radius,
        noise_multiplier=plan.noise_multiplier,
        generator=generator,
    )
    v = delta if plan.kind == RESTART else state.v + delta  # type: ignore[operator]
    new = Diff2State(round=plan.round, x=state.x - cfg.lr * v, x_prev=state.x, v=v)
    return new, RoundInfo(plan.round, plan.kind, plan.radius, plan.noise_multiplier, std)


def step(
    cfg: Diff2Config, state: Diff2State, clients: Sequence[PerExampleGrads], *, generator: torch.Generator
) -> tuple[Diff2State, RoundInfo]:
    """One DIFF2-GD round r = ``state.round + 1`` (the recursion in the module docstring)."""
    plan = plan_round(cfg, state)
    x = state.x
    if plan.kind == RESTART:
        grads = [fn(x) for fn in clients]
    else:
        grads = [fn(x) - fn(state.x_prev) for fn in clients]  # type: ignore[arg-type]
    total = clipped_mean(grads[0], plan.radius)
    for g in grads[1:]:
        total = total + clipped_mean(g, plan.radius)
    return finish_round(
        cfg,
        state,
        plan,
        total,
        clients=len(grads),
        min_examples=min(g.shape[0] for g in grads),
        generator=generator,
    )


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
    """The DP-GD baseline: x_r = x_{r−1} − η·[(1/P) Σ_p ClippedMean_p(∇ℓ(x_{r−1}; z), C) + N(0, (σC/(P·n_min))² I)].

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
        if cfg.kind(r) == RESTART:
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
    from fedsim.privacy.accounting import Mechanism

    return [Mechanism(noise_multiplier=s, sample_rate=1.0, steps=k) for s, k in counts.items()]


def epsilon_rdp(cfg: Diff2Config, rounds: int, delta: float) -> float:
    """ε(δ) of ``rounds`` rounds by RDP: ``composed_mechanisms`` through
    ``fedsim.privacy.accounting.epsilon_of_sequence("rdp", ...)`` (opacus' RDP accountant, RDP added)."""
    from fedsim.privacy.accounting import epsilon_of_sequence

    return epsilon_of_sequence("rdp", composed_mechanisms(cfg, rounds), delta)


# ------------------------------------------------------------------------------------ the engine's strategies

DIFF2_NAMES = FULL_BATCH_STRATEGIES
"""Strategy names the engine runs with ``fedsim.engine.diff2_loop`` (full participation, full-batch rounds)."""

_ARGS = {
    "diff2": (
        "lr",
        "restart_every",
        "clip1",
        "clip2",
        "noise_multiplier1",
        "noise_multiplier2",
        "noise_ratio",
    ),
    "dp_gd": ("lr", "clip", "noise_multiplier"),
}


@dataclass(frozen=True)
class Diff2Strategy:
    """DIFF2-GD (``diff2``) or DP-GD (``dp_gd``: T = 1, C1 = C2, σ1 = σ2) as the engine runs it.

    ``noise_ratio`` is σ2/σ1, used when σ1 comes from the scenario's ``privacy`` block (given or calibrated).
    """

    family: ClassVar[str] = "diff2"
    """The loop that runs it (``fedsim.engine.loop.FAMILIES``)."""

    name: str
    config: Diff2Config
    noise_ratio: float = 1.0

    def with_noise(self, noise_multiplier1: float) -> Diff2Strategy:
        """The same strategy with σ1 = ``noise_multiplier1`` and σ2 = ``noise_ratio``·σ1."""
        cfg = replace(
            self.config,
            noise_multiplier1=float(noise_multiplier1),
            noise_multiplier2=float(noise_multiplier1) * self.noise_ratio,
        )
        return replace(self, config=cfg)

    def privacy_settings(self) -> FullBatchSettings:
        """What the privacy plan accounts for this strategy (``fedsim.privacy.plan.plan_from_scenario``'s
        ``full_batch``): T, C1, C2 and σ2/σ1 from the validated arguments."""
        from fedsim.privacy.plan import FullBatchSettings  # here: the plan imports the accountants

        c = self.config
        return FullBatchSettings(
            restart_every=int(c.restart_every),
            clip1=float(c.clip1),
            clip2=float(c.clip2),
            noise_ratio=float(self.noise_ratio),
        )


def make_diff2_strategy(name: str) -> Callable[..., Diff2Strategy]:
    """Registry factory for ``diff2`` and ``dp_gd`` (``strategy.args`` as in ``docs/scenarios.md``)."""

    def factory(
        *, clients_per_round: int, args: Mapping[str, Any], server_optimizer: Mapping[str, Any], **_: Any
    ) -> Diff2Strategy:
        del clients_per_round  # full participation: the engine checks it equals population.clients
        for key in args:
            if key not in _ARGS[name]:
                raise ConfigError(f"strategy.args.{key}", f"one of {', '.join(_ARGS[name])} for {name}", key)
        if dict(server_optimizer) != {"name": "sgd", "lr": 1.0}:
            raise ConfigError(
                "strategy.server_optimizer",
                f"left at its default (sgd, lr 1) for {name}: the step is strategy.args.lr",
                dict(server_optimizer),
            )
        if "lr" not in args:
            raise ConfigError("strategy.args.lr", f"given for {name} (the GD step η > 0)")
        if name == "dp_gd":
            clip, sigma = args.get("clip", 1.0), args.get("noise_multiplier", 0.0)
            try:
                cfg = Diff2Config(args["lr"], 1, clip, clip, sigma, sigma)
            except ConfigError as exc:  # name dp_gd's own keys (clip, noise_multiplier)
                raise ConfigError(exc.field.rstrip("12"), exc.expected, exc.got) from None
            return Diff2Strategy(name, cfg, 1.0)
        ratio = _number(
            "noise_ratio", args.get("noise_ratio", 1.0), "a finite number > 0", lambda v: 0 < v < math.inf
        )
        cfg = Diff2Config(
            lr=args["lr"],
            restart_every=args.get("restart_every", 8),
            clip1=args.get("clip1", 1.0),
            clip2=args.get("clip2", 1.0),
            noise_multiplier1=args.get("noise_multiplier1", 0.0),
            noise_multiplier2=args.get("noise_multiplier2", 0.0),
        )
        return Diff2Strategy(name, cfg, ratio)

    factory.__doc__ = f"Build the {name!r} strategy."
    return factory
