"""Which metrics of a DP run are covered by its (ε, δ) statement, and which are un-privatised diagnostics.

Why this module exists: the privacy statement covers the noised aggregates only, yet a run's metrics rows also
carry exact quantities computed from the clients' data — the training loss, clipping quantiles, the clipped
fraction (which, with adaptive clipping, undoes the noised count), signal-to-noise of the clean sum, cohort
counts, virtual and wall time (they depend on who trained), DIFF2's gradient norm. ``privacy.release_diagnostics``
decides whether they are written; this module is the one place that classifies a row's fields, so the engine
(which filters the rows) and the privacy report (which lists what was released) agree.

A field the classification does not name as privatised counts as a diagnostic: a new metric is withheld from DP
runs until someone argues it is covered by the mechanism.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PRIVATISED_FIELDS = frozenset(
    {
        "round",
        # the released model's evaluation on the central test set (public data): post-processing
        "test_loss",
        "test_accuracy",
        # the mechanism itself: data-independent parameters, or (adaptive clip) functions of noised counts
        "dp_clip",
        "dp_noise_std",
        "dp_noise_std_on_mean",
        "dp_noise_multiplier",
        "dp_count_noise_std",
        "dp_count_sensitivity",
        # the server optimizer's view of the noised mean: post-processing
        "aggregated",
        "pseudo_grad_norm",
        # DIFF2 / DP-GD: the round's kind, clip radius (from public iterates), σ and noise std
        "kind",
        "radius",
        "noise_multiplier",
        "noise_std",
    }
)
"""Fields a DP run always writes: the mechanism, ε, and post-processing of its noised output."""

PRIVATISED_PREFIXES = ("epsilon_",)
"""ε spent so far, per accountant (``epsilon_rdp``, ...): computed from the mechanism alone."""

DIAGNOSTIC_FIELDS = (
    "train_loss",
    "grad_norm",
    "clip_fraction",
    "dp_clipped_fraction",
    "dp_norm_p10",
    "dp_norm_p50",
    "dp_norm_p90",
    "dp_signal_to_noise",
    "dp_clients",
    "selected",
    "clients",
    "dropped",
    "dropped_failure",
    "dropped_offline",
    "dropped_timeout",
    "dropped_unavailable",
    "dropped_late",
    "dropped_nonfinite",
    "virtual_time_s",
    "round_virtual_s",
    "wall_time_s",
    "round_wall_s",
    "time_dispatch_s",
    "time_train_s",
    "time_aggregate_s",
    "time_eval_s",
    "time_round_trip_s",
)
"""The un-privatised fields the engine writes in DP runs' rows, by name: withheld unless
``privacy.release_diagnostics``, and then listed in ``privacy.json``/``privacy.md``. (Any other field that is not
privatised is treated the same way; this list is what the report names.)"""


def is_privatised(name: str) -> bool:
    """Whether a metrics field is covered by the run's DP statement."""
    return name in PRIVATISED_FIELDS or name.startswith(PRIVATISED_PREFIXES)


def release_row(row: Mapping[str, Any], *, diagnostics: bool) -> dict[str, Any]:
    """The part of a DP run's metrics row that may be written: everything with ``diagnostics``, else only the
    privatised fields."""
    return dict(row) if diagnostics else {k: v for k, v in row.items() if is_privatised(k)}


def released_diagnostics(release: bool, written: Iterable[str] = ()) -> list[str]:
    """The names of the un-privatised fields a DP run releases: none unless ``release``; else
    :data:`DIAGNOSTIC_FIELDS` and any other non-privatised field among ``written`` (the keys of its rows)."""
    if not release:
        return []
    extra = sorted({k for k in written if not is_privatised(k)} - set(DIAGNOSTIC_FIELDS))
    return [*DIAGNOSTIC_FIELDS, *extra]
