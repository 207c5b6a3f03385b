"""The privacy report: ``privacy.json``, ``privacy.md`` and ``plots/privacy_epsilon.png``.

Why this module exists: one of fedsim's three jobs is a DP accounting report for every scenario. ``fedsim privacy``
writes it from the scenario alone (what the mechanism will spend), and ``fedsim run`` writes it again at the end of
a DP run, adding the clipping statistics it measured. The statement in words follows the spirit of TF-Privacy's
``compute_dp_sgd_privacy_statement``: what is protected, under which adjacency, every parameter, ε by each
accountant, and the caveats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.privacy.accounting import FLOAT64_NOISE_BOUND, describe_sampling, truncation_delta
from fedsim.privacy.plan import PrivacyPlan, Spend, spend
from fedsim.privacy.release import released_diagnostics
from fedsim.privacy.sample_level import group_epsilons, worst_group_by

NOT_PRIVATE = "NOT PRIVATE: insecure seed"

ACCOUNTANT_NAMES = {
    "rdp": "RDP (Rényi DP, opacus RDPAccountant or dp_accounting RdpAccountant)",
    "prv": "PRV (privacy random variables, opacus PRVAccountant, upper bound)",
    "pld": "PLD (privacy loss distributions, dp_accounting PLDAccountant)",
}


def measured_clipping(rows: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Clipping statistics of a DP run from its metrics rows (None when there are none).

    Averaged over rounds: fraction of updates clipped, quantiles of update norms before clipping, the
    signal-to-noise ratio ‖Σ clipped‖ / (σC√d), and the last clip bound (it moves with adaptive clipping).
    """
    dp = [r for r in rows if r.get("dp_clip") is not None]
    if not dp:
        return _full_batch_clipping(rows)

    def mean(key: str) -> float | None:
        vals = [float(r[key]) for r in dp if r.get(key) is not None and math.isfinite(float(r[key]))]
        return float(np.mean(vals)) if vals else None

    out = {
        "rounds": len(dp),
        "clipped_fraction": mean("dp_clipped_fraction"),
        "norm_p10": mean("dp_norm_p10"),
        "norm_p50": mean("dp_norm_p50"),
        "norm_p90": mean("dp_norm_p90"),
        "signal_to_noise": mean("dp_signal_to_noise"),
        "clients_per_round": mean("dp_clients"),
        "final_clip": float(dp[-1]["dp_clip"]),
        "noise_std_on_mean": mean("dp_noise_std_on_mean"),
    }
    return {k: v for k, v in out.items() if v is not None}


def _full_batch_clipping(rows: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """DIFF2/DP-GD rows (``kind``, ``clip_fraction``, ``radius``): the mean fraction of per-example gradients
    (restart rounds) and gradient differences (difference rounds) clipped, and the mean radius of each kind."""
    out: dict[str, float] = {}
    for kind in ("restart", "difference"):
        here = [r for r in rows if r.get("kind") == kind and r.get("clip_fraction") is not None]
        if here:
            out[f"{kind}_rounds"] = len(here)
            out[f"{kind}_clipped_fraction"] = float(np.mean([float(r["clip_fraction"]) for r in here]))
            out[f"{kind}_radius_mean"] = float(np.mean([float(r["radius"]) for r in here]))
    return out or None


def privacy_record(
    plan: PrivacyPlan,
    spent: Spend,
    *,
    source: str,
    measured: Mapping[str, float] | None = None,
    rounds_run: int | None = None,
) -> dict[str, Any]:
    """The ``privacy.json`` content (the spec's keys and a few more)."""
    cfg, mech = plan.config, plan.mechanism
    composed = spent.rounds_at[-1] * plan.steps_per_round if spent.rounds_at else mech.steps
    accounted = replace(mech, steps=composed)
    record: dict[str, Any] = {
        "level": cfg.level,
        "mechanism": "gaussian",
        "clip": cfg.clip,
        "per_layer": cfg.per_layer,
        "normalize_layers": cfg.normalize_layers,
        "noise_multiplier": mech.noise_multiplier,
        "sample_rate": mech.sample_rate,
        "sampling": mech.sampling,
        "cohort": plan.cohort,
        "population": plan.population,
        "rounds": composed,
        "rounds_planned": mech.steps,
        "adjacency": adjacency(plan),
        "noise_multiplier_accounted": mech.noise_multiplier,
        "delta": cfg.delta,
        "delta_truncation": _truncation(plan, accounted),
        "noise_sampler": f"float64 Box–Muller, |z| <= {FLOAT64_NOISE_BOUND:.3f}",
        "epsilon": dict(spent.epsilon),
        "epsilon_rounds": list(spent.rounds_at),
        "epsilon_per_round": {k: list(v) for k, v in spent.curve.items()},
        "calibrated": plan.calibrated,
        "target_epsilon": cfg.target_epsilon,
        "insecure_seed": cfg.insecure_seed,
        "released_diagnostics": released_diagnostics(cfg.release_diagnostics),
        "extrapolated": None,
        "source": source,
    }
    record["delta_total"] = cfg.delta + record["delta_truncation"]
    if cfg.level == "client" and cfg.per_layer == "adaptive":
        from fedsim.privacy.client_level import adaptive_noise_split

        count_std = cfg.count_noise_multiplier or plan.cohort / 20.0
        record["noise_multiplier_update"] = adaptive_noise_split(mech.noise_multiplier, count_std)
        record["count_noise_std"] = count_std
    if rounds_run is not None:
        record["rounds_run"] = rounds_run
    if plan.schedule is not None:
        record |= _full_batch_keys(plan, composed)
    elif cfg.level == "sample":
        record |= _sample_level_keys(plan, composed // plan.steps_per_round)
    if plan.extrapolated is not None:
        ex = plan.extrapolated
        ex_spent = spend(ex.mechanism, cfg.delta, plan.accountants, max_points=2)
        record["extrapolated"] = {
            "cohort": ex.cohort,
            "population": ex.population,
            "noise_multiplier": ex.mechanism.noise_multiplier,
            "sample_rate": ex.mechanism.sample_rate,
            "epsilon": dict(ex_spent.epsilon),
        }
    if measured is not None:
        record["measured_clipping"] = dict(measured)
    return record


def adjacency(plan: PrivacyPlan) -> str:
    """The neighbouring relation the guarantee is stated for (what one person's data can change)."""
    if plan.schedule is not None:
        return "zero-out one example (its gradient replaced by zero; client sizes public and fixed)"
    if plan.config.level == "sample":
        return "add/remove one example of one client's data"
    if plan.mechanism.sampling == "fixed_size":
        return "replace one client's data"
    return "add/remove one client's data"


def _truncation(plan: PrivacyPlan, accounted: Any) -> float:
    """δ added by the float64 sampler's cut tail, over every mechanism composed."""
    if plan.schedule is not None:
        return sum(truncation_delta(m) for m in plan.schedule.mechanisms(accounted.steps))
    return truncation_delta(accounted)


def _full_batch_keys(plan: PrivacyPlan, rounds: int) -> dict[str, Any]:
    """What DIFF2 / DP-GD adds: the strategy, both σ and clips, and the list of mechanisms composed."""
    sch = plan.schedule
    assert sch is not None
    mechanisms = []
    for kind in ("restart", "difference"):
        count = sch.kinds[:rounds].count(kind)
        if count:
            clip = sch.clip1 if kind == "restart" else sch.clip2
            mechanisms.append(
                {
                    "kind": kind,
                    "noise_multiplier": sch.sigma(kind),
                    "sample_rate": 1.0,
                    "rounds": count,
                    "l2_sensitivity": (
                        f"{clip:g}/(P·n_min) = {clip / (sch.clients * sch.min_examples):.6g}"
                        if kind == "restart"
                        else f"{clip:g}·‖x_(r−1) − x_(r−2)‖/(P·n_min)"
                    ),
                }
            )
    return {
        "strategy": sch.strategy,
        "clip": sch.clip1,
        "clip2": sch.clip2 if sch.strategy == "diff2" else None,
        "noise_multiplier2": sch.noise_multiplier2,
        "noise_ratio": sch.noise_ratio,
        "restart_every": sch.restart_every,
        "clients": sch.clients,
        "min_examples": sch.min_examples,
        "mechanisms": mechanisms,
        "client_participation": "every client, every round (full batch, q = 1: no amplification by sampling)",
    }


def _sample_level_keys(plan: PrivacyPlan, rounds: int) -> dict[str, Any]:
    """What sample-level DP adds: the per-step mechanism's schedule, the worst clients and every group's ε.

    The worst groups are those after ``rounds`` (what a stopped run composed), not at the planned rounds: the worst
    group can change with the number of rounds, and each accountant's ε is its worst group's there (the largest).
    """
    cfg = plan.config
    epochs = plan.steps_per_round // plan.worst_group.steps_per_epoch
    eps = group_epsilons(plan.groups, plan.noise_multiplier, cfg.delta, epochs=epochs, rounds=rounds)
    worst = plan.groups[max(range(len(eps)), key=eps.__getitem__)]
    by_accountant = {  # (cached: the spend computed every group's ε at these rounds)
        a: worst
        if a == "rdp"
        else worst_group_by(a, plan.groups, plan.noise_multiplier, cfg.delta, epochs=epochs, rounds=rounds)
        for a in plan.accountants
    }
    local_steps = epochs * worst.steps_per_epoch
    return {
        "local_steps": local_steps,
        "federated_rounds": rounds,
        "client_participation": "every round (worst case; no amplification by client sampling)",
        "worst_client": {
            "steps_per_epoch": worst.steps_per_epoch,
            "examples": worst.min_examples,
            "expected_batch_size": max(1, int(worst.min_examples * worst.sample_rate)),
        },
        # the top-level mechanism keys describe the worst clients after these rounds (by RDP, as the table)
        "population": worst.min_examples,
        "sample_rate": worst.sample_rate,
        "cohort": max(1, int(worst.min_examples * worst.sample_rate)),
        "rounds": rounds * local_steps,
        "rounds_planned": plan.rounds * local_steps,
        "worst_client_by_accountant": {
            a: {
                "steps_per_epoch": g.steps_per_epoch,
                "examples": g.min_examples,
                "sample_rate": g.sample_rate,
                "steps": rounds * epochs * g.steps_per_epoch,
            }
            for a, g in by_accountant.items()
        },
        "client_groups": [
            {
                "steps_per_epoch": g.steps_per_epoch,
                "sample_rate": g.sample_rate,
                "clients": g.clients,
                "min_examples": g.min_examples,
                "max_examples": g.max_examples,
                "epsilon_rdp": e,
            }
            for g, e in zip(plan.groups, eps, strict=True)
        ],
    }


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def statement(record: Mapping[str, Any], plan: PrivacyPlan) -> str:
    """``privacy.md``: the guarantee in words, parameters, ε per accountant, caveats, measured clipping."""
    eps = record["epsilon"]
    lines = []
    if record["insecure_seed"]:
        lines += [
            f"# {NOT_PRIVATE}",
            "",
            "The noise and the cohorts were drawn from the scenario seed (`privacy.insecure_seed: "
            "true`): anyone with the scenario can subtract it. The numbers below describe the mechanism, "
            "not a guarantee this run gives.",
            "",
        ]
    lines += [
        "# Privacy report",
        "",
        f"Source: {'the scenario alone, before training' if record['source'] == 'scenario' else 'this run'}.",
        "",
        "## Statement",
        "",
        _statement_words(record, plan),
        "",
        "| accountant | ε | δ |",
        "|---|---|---|",
        *[f"| {ACCOUNTANT_NAMES[a]} | {_fmt(v)} | {record['delta']:g} |" for a, v in eps.items()],
        "",
        "## Parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *_parameter_rows(record, plan),
        "",
    ]
    if record.get("client_groups"):
        lines += [
            "## Every client's guarantee (RDP)",
            "",
            "Clients grouped by local steps per epoch ⌈n/B⌉ (the same q and the same number of steps, hence the same "
            "ε); the statement above is the worst group's.",
            "",
            "| steps per epoch | sample rate q | clients | examples | ε (rdp) |",
            "|---|---|---|---|---|",
            *[
                f"| {g['steps_per_epoch']} | {_fmt(g['sample_rate'])} | {g['clients']} | "
                f"{g['min_examples']}–{g['max_examples']} | {_fmt(g['epsilon_rdp'])} |"
                for g in record["client_groups"]
            ],
            "",
        ]
    ex = record.get("extrapolated")
    if ex:
        lines += [
            "## Extrapolation to the deployed setting",
            "",
            (
                f"Accounted as deployed with a cohort of {ex['cohort']} of {ex['population']} clients "
                f"(q' = {_fmt(ex['sample_rate'])}), keeping the noise on the mean fixed: σ' = σ·s'/s = "
                f"{_fmt(ex['noise_multiplier'])}. Deployed ε: "
                + ", ".join(f"{a} {_fmt(v)}" for a, v in ex["epsilon"].items())
                + ". This is the guarantee the deployed system would give; the simulation itself, with its smaller "
                "cohort, has the ε in the statement above (it is not the deployed guarantee)."
            ),
            "",
        ]
    lines += ["## Caveats", ""]
    lines += [f"- {c}" for c in caveats(record, plan)]
    released = record.get("released_diagnostics")
    lines.append(
        "- Released un-privatised diagnostics (`privacy.release_diagnostics`), not covered by this statement: "
        + ", ".join(f"`{k}`" for k in released)
        if released
        else "- No un-privatised diagnostics are released (`privacy.release_diagnostics: false`)."
    )
    m = record.get("measured_clipping")
    if m:
        lines += [
            "",
            "## Measured clipping (this run)",
            "",
            "Simulation diagnostics, not privatised: a deployment would not release them.",
            "",
            "| statistic | value |",
            "|---|---|",
            *[f"| {k} | {_fmt(float(v))} |" for k, v in m.items()],
        ]
    lines += ["", "![ε per round](plots/privacy_epsilon.png)", ""]
    return "\n".join(lines)


def _statement_words(record: Mapping[str, Any], plan: PrivacyPlan) -> str:
    if plan.schedule is not None:
        return _full_batch_statement(record, plan)
    if plan.config.level == "sample":
        return _sample_level_statement(record, plan)
    return _client_level_statement(record, plan)


def _full_batch_statement(record: Mapping[str, Any], plan: PrivacyPlan) -> str:
    sch = plan.schedule
    assert sch is not None
    what = (
        f"DIFF2-GD (restart every T = {sch.restart_every} rounds)"
        if sch.strategy == "diff2"
        else "DP-GD (full-batch gradient descent)"
    )
    parts = ", ".join(
        f"{m['rounds']} {m['kind']} round(s) with noise multiplier {_fmt(m['noise_multiplier'])}"
        for m in record["mechanisms"]
    )
    return (
        f"{what} with sample-level DP: every round each of the {sch.clients} clients computes every one of its "
        "examples' gradients (or, in DIFF2's difference rounds, gradient differences between the last two "
        f"iterates), clips each to L2 norm {_fmt(sch.clip1)} (restart rounds)"
        + (
            f" or {_fmt(sch.clip2)}·‖x_(r−1) − x_(r−2)‖ (difference rounds)"
            if sch.strategy == "diff2"
            else ""
        )
        + ", and averages them; the server averages the clients' means and adds Gaussian noise once, of standard "
        "deviation noise multiplier × clip/(P·n_min) (the aggregate's L2 sensitivity when one example's gradient "
        "is replaced by zero, each client's size n_p being public and fixed; n_min = "
        f"{sch.min_examples}). Every client takes part in every "
        f"round (q = 1, no amplification). The run composes {parts}: it is "
        f"({_fmt(max(record['epsilon'].values()))}, {record['delta_total']:.3g})-differentially private with "
        "respect to zero-out adjacency: one example of one client's data replaced by one whose gradient is zero "
        "(by the most conservative of the accountants below, each composing this heterogeneous sequence). "
        "Adding or removing an example would change n_p and needs twice the noise (sensitivity 2C/(P·(n_p + 1)))."
    )


def _client_level_statement(record: Mapping[str, Any], plan: PrivacyPlan) -> str:
    cfg = plan.config
    if "noise_multiplier_update" in record:
        noise = (
            f"{_fmt(record['noise_multiplier_update'])} × C_t (σ_Δ: the share of σ = "
            f"{_fmt(record['noise_multiplier'])} left once the centred count of unclipped clients gets noise of "
            f"std {_fmt(record['count_noise_std'])}; the pair costs what σ alone costs)"
        )
    else:
        noise = f"{_fmt(record['noise_multiplier'])} × clip"
    return (
        f"Client-level DP-FedAvg with the Gaussian mechanism: each client's whole update is clipped to L2 norm "
        f"{_fmt(cfg.clip)} ({_clip_words(cfg)}), the sum over the cohort gets Gaussian noise of standard "
        f"deviation {noise} once per round, and the server divides by the "
        f"expected cohort size {record['cohort']}. Over {record['rounds']} rounds with "
        f"{describe_sampling(plan.mechanism)}, the training run is "
        f"({_fmt(max(record['epsilon'].values()))}, {record['delta_total']:.3g})-differentially private with "
        f"respect to {_relation_words(record)} (by the most conservative of the accountants below; δ includes "
        f"{record['delta_truncation']:.2g} for the noise sampler's cut tail)."
    )


def _relation_words(record: Mapping[str, Any]) -> str:
    return {
        "add/remove one client's data": "adding or removing all of one client's data",
        "replace one client's data": "replacing all of one client's data by any other",
        "add/remove one example of one client's data": "adding or removing one example of one client's data",
    }.get(record["adjacency"], record["adjacency"])


def _sample_level_statement(record: Mapping[str, Any], plan: PrivacyPlan) -> str:
    cfg = plan.config
    return (
        f"Sample-level DP-SGD on every client: at each local step a client includes each of its n examples "
        f"independently with probability q = 1/⌈n/B⌉ (Poisson sampling), clips every example's gradient to L2 "
        f"norm {_fmt(cfg.clip)}, adds Gaussian noise of standard deviation {_fmt(record['noise_multiplier'])} × "
        f"clip to the sum and divides by int(n·q), as Opacus does. Every client is assumed to take part in every "
        f"round (no amplification by client sampling is claimed). The least protected clients are those with "
        f"{record['worst_client']['steps_per_epoch']} step(s) per epoch (n = {record['population']}, "
        f"q = {_fmt(record['sample_rate'])}): over {record['federated_rounds']} rounds × "
        f"{record['local_steps']} local steps = {record['rounds']} composed steps, the training run is "
        f"({_fmt(max(record['epsilon'].values()))}, {record['delta_total']:.3g})-differentially private with "
        "respect to adding or removing one example of one client's data (by the most conservative of the "
        "accountants below); every other client's examples are at least as well protected."
    )


def _parameter_rows(record: Mapping[str, Any], plan: PrivacyPlan) -> list[str]:
    cfg = plan.config
    sigma = f"| noise multiplier σ | {_fmt(record['noise_multiplier'])}" + (
        f" (calibrated for target ε = {cfg.target_epsilon:g} with {plan.accountants[0]})"
        if plan.calibrated
        else ""
    )
    if plan.schedule is not None:
        sch = plan.schedule
        rows = [
            f"| strategy | {sch.strategy} |",
            "| level | sample (one example of one client's data is the unit protected) |",
            sigma.replace("noise multiplier σ", "noise multiplier σ1 (restart rounds)")
            + (f", σ2/σ1 = {_fmt(sch.noise_ratio)} fixed" if plan.calibrated else "")
            + " |",
            f"| clip C1 (per example, restart rounds) | {_fmt(sch.clip1)} |",
        ]
        if sch.strategy == "diff2":
            rows += [
                f"| noise multiplier σ2 (difference rounds) | {_fmt(sch.noise_multiplier2)} |",
                f"| clip C2 (per example difference, per unit step norm) | {_fmt(sch.clip2)} |",
                f"| restart period T | {sch.restart_every} |",
            ]
        rows += [
            *[
                f"| mechanism: {m['kind']} rounds | {m['rounds']} × Gaussian, σ = {_fmt(m['noise_multiplier'])}, "
                f"q = 1, sensitivity {m['l2_sensitivity']} |"
                for m in record["mechanisms"]
            ],
            f"| clients P, smallest n_min | {sch.clients}, {sch.min_examples} |",
            f"| rounds | {record['rounds']} |",
            f"| δ | {record['delta']:g} |",
        ]
        return rows
    if cfg.level == "sample":
        return [
            "| level | sample (one example of one client's data is the unit protected) |",
            f"| clip C | {_fmt(cfg.clip)} (each example's whole gradient, flat clipping as in Opacus) |",
            sigma + " |",
            f"| sample rate q (worst clients) | {_fmt(record['sample_rate'])} = 1/⌈n/B⌉, n = {record['population']} |",
            f"| expected batch int(n·q) | {record['cohort']} |",
            "| sampling | poisson (of examples, within each client) |",
            f"| rounds | {record['federated_rounds']} |",
            f"| local steps per round (worst clients) | {record['local_steps']} |",
            f"| composed steps | {record['rounds']} |",
            f"| δ | {record['delta']:g} |",
        ]
    return [
        f"| level | {record['level']} (a client's whole data is the unit protected) |",
        f"| clip C | {_fmt(cfg.clip)} ({_clip_words(cfg)}) |",
        sigma + " |",
        f"| sample rate q | {_fmt(record['sample_rate'])} = {record['cohort']} / {record['population']} |",
        f"| sampling | {record['sampling']} |",
        f"| rounds (composed invocations) | {record['rounds']} of {record['rounds_planned']} planned |",
        f"| adjacency | {record['adjacency']} |",
        f"| δ (accountants) + δ (sampler's cut tail) | {record['delta']:g} + {record['delta_truncation']:.2g} |",
    ]


def _clip_words(cfg: Any) -> str:
    words = {
        None: "one bound on the whole update",
        "independent": f"each layer bounded by its {cfg.layer_split} share of C",
        "uniform": "Pelikan et al.'s rule: over the bound, every layer set to norm C/√L",
        "dimension": "Pelikan et al.'s rule: over the bound, every layer set to norm C·√(d_l/d)",
        "adaptive": "adaptive: C follows the target quantile "
        f"{cfg.target_quantile:g} of update norms, starting at the value given",
    }[cfg.per_layer]
    return words + ("; each layer first normalised to unit norm" if cfg.normalize_layers else "")


def caveats(record: Mapping[str, Any], plan: PrivacyPlan) -> list[str]:
    """The assumptions a reader must know to trust the numbers."""
    out = []
    if record["insecure_seed"]:
        out.append(f"{NOT_PRIVATE}: the noise and the cohort sampling came from the scenario seed.")
    else:
        out.append(
            "Noise drawn from torch's generator seeded by the operating system's CSPRNG: the seed cannot be "
            "guessed, but the stream itself is not a cryptographic generator and floating-point Gaussian sampling "
            "is not hardened against the attacks of Mironov (CCS 2012); a deployment should use a CSPRNG-backed "
            "sampler."
        )
    if plan.schedule is not None:
        return out + _full_batch_caveats(plan)
    if plan.config.level == "sample":
        return out + _sample_level_caveats(record)
    if record["sampling"] == "poisson":
        out.append(
            "Poisson sampling: the engine drew every round's cohort by including each available client "
            "independently with probability q, as the accountants assume; the cohort size varies around its "
            "expectation, and the server divides by the expected size."
        )
    else:
        out.append(
            "Fixed-size cohorts drawn without replacement, accounted with replace-one adjacency (one client's data "
            "replaced by another's, not added or removed: the sum moves by up to 2C, so σ/2 per unit of "
            "sensitivity) by dp_accounting's "
            "SampledWithoutReplacementDpEvent; its bound (Wang et al. 2019) is conservative, often far above the "
            "Poisson figure."
        )
    out.append(
        "Client availability and failures below 100% only remove clients after sampling; ε is computed for the "
        "full rate q, an upper bound when availability is independent of the data."
    )
    out.append(
        f"{NOT_PRIVATE}: the cohorts were drawn from the scenario seed, which scenario.yaml publishes; anyone with "
        "it can replay who was sampled, so the amplification by sampling above does not hold."
        if record["insecure_seed"]
        else "Cohorts drawn from a generator seeded by the OS CSPRNG (never written out): amplification by "
        "sampling assumes the server keeps the cohort secret."
    )
    if plan.config.per_layer == "adaptive":
        out.append(
            "Adaptive clipping: the centred count Σ(b_i − ½) of unclipped clients is released with its own noise; "
            "the update noise is reduced to σ_Δ so the pair costs what σ alone costs (Andrew et al., Theorem 1)."
        )
    return out


def _full_batch_caveats(plan: PrivacyPlan) -> list[str]:
    sch = plan.schedule
    assert sch is not None
    out = [
        "Central DP: the clients send their clipped means to the server unnoised and the server adds the noise "
        "once; the guarantee is for what the server releases (the iterates), against anyone but the server.",
        "Each client's number of examples is treated as public (the divisor of its clipped mean and n_min).",
        "Full participation: every client in every round (q = 1), so no amplification by sampling is claimed; "
        "a client that fails stops the run rather than changing the mechanism.",
    ]
    if sch.strategy == "diff2":
        out.append(
            "A difference round's sensitivity scales with the step ‖x_(r−1) − x_(r−2)‖, which is public (both "
            "iterates were released); a zero step releases exactly 0 but is still counted, so ε is a "
            "data-independent upper bound."
        )
    return out


def _sample_level_caveats(record: Mapping[str, Any]) -> list[str]:
    secret = (
        "drawn from the scenario seed, so they are not secret either"
        if record["insecure_seed"]
        else "drawn from a CSPRNG-seeded generator of each client, per round"
    )
    return [
        f"Poisson sampling of examples within each client, as the accountants assume: the batches are {secret}; "
        "amplification by sampling assumes nobody sees which examples a step used.",
        "Each client's number of examples n is treated as public, as Opacus treats the dataset size: it sets the "
        "client's q, its number of steps and its weight in the server's average.",
        "Worst case over clients and over rounds: every client is assumed to train in every round, so the "
        "cohort sampling of the server adds no amplification to these numbers; clients that train less are "
        "better protected than stated.",
        "The guarantee is per client dataset: an example held by two clients, or a person with examples at "
        "several clients, is protected per copy (group privacy applies beyond that).",
        "The clipping statistics are the clients' own diagnostics (not privatised); a deployment would not "
        "release them.",
    ]


def plot_epsilon(record: Mapping[str, Any], path: Path) -> Path:
    """ε spent after each round, one line per accountant.

    Drawn on a bare ``Figure`` with the Agg canvas (imported here, when a report is written): no pyplot, so no
    global figure registry and no backend selection, and half the import cost.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for (acc, curve), style in zip(record["epsilon_per_round"].items(), ("-", "--", ":"), strict=False):
        ax.plot(record["epsilon_rounds"], curve, linestyle=style, linewidth=2, label=acc)
    title = f"ε spent (δ = {record['delta']:g})"
    if record["insecure_seed"]:
        title += f" — {NOT_PRIVATE}"
    ax.set(xlabel="round", ylabel="ε", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_privacy_report(folder: Path, record: Mapping[str, Any], plan: PrivacyPlan) -> list[Path]:
    """Write ``privacy.json``, ``privacy.md`` and ``plots/privacy_epsilon.png`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / "privacy.json"
    js.write_text(json.dumps(record, indent=2, allow_nan=False, default=float) + "\n", encoding="utf-8")
    md = folder / "privacy.md"
    md.write_text(statement(record, plan), encoding="utf-8")
    png = plot_epsilon(record, folder / "plots" / "privacy_epsilon.png")
    return [js, md, png]
