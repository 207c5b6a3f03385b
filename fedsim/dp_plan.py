"""A scenario's DP plan, resolved for the commands and the engine: the one place that joins the privacy plan
(``fedsim.privacy.plan``) with what only the layers above it know.

Why this module exists: the privacy package sits below the strategies and the engine (they import it), so it
cannot read a full-batch strategy's validated arguments (``strategies.diff2``) nor the machine's data cache
(``fedsim.engine``) itself. :func:`scenario_plan` gives it the strategy's settings (built from
``strategy.args``, as validation does) and passes on the client sizes or the data builder its caller has. It
builds no data itself: the sizes come from the caller, from the cheap path (``fedsim.data.sizes``) or from the
caller's ``build``; without one, the privacy plan builds the partition, without the cache. It sits above the
strategies and below the engine (docs/architecture.md, Layers), outside ``fedsim.scenario`` and
``fedsim.privacy``, which it joins (the privacy plan reads the schema: inside either package it would make the
two import each other). Nothing heavy at module level: a client-level ``fedsim privacy`` imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fedsim.privacy import FULL_BATCH_STRATEGIES
from fedsim.privacy.plan import FullBatchSettings, PrivacyPlan, Spend, plan_from_scenario, spend_rounds
from fedsim.scenario.schema import Scenario


def full_batch_settings(scenario: Scenario) -> FullBatchSettings | None:
    """The settings a full-batch strategy (``diff2``, ``dp_gd``) is accounted with, from its validated
    ``strategy.args``; None for every other strategy.

    Raises:
        ConfigError: naming ``strategy.args.<key>`` for arguments the strategy refuses.
    """
    if scenario.strategy.name not in FULL_BATCH_STRATEGIES:
        return None
    from strategies import build_strategy  # imported here: the strategies package imports torch

    strategy = build_strategy(scenario.strategy, scenario.population.clients)
    return strategy.privacy_settings()  # type: ignore[union-attr]


def scenario_plan(
    scenario: Scenario,
    client_sizes: Sequence[int] | None = None,
    *,
    build: Callable[[], Any] | None = None,
) -> PrivacyPlan:
    """``scenario.privacy`` (which must be set) resolved into a :class:`PrivacyPlan`.

    Args:
        client_sizes: every client's number of training examples where the caller has them (the engine's
            built partition); else computed when the plan needs them (sample level), without the examples
            where the dataset allows.
        build: the scenario's ``FederatedData`` when the sizes need the examples (the commands pass the
            machine's data cache, ``fedsim.engine.setup.build_data``); default: built without the cache.

    Raises:
        ConfigError: naming the field, for settings that cannot be accounted.
    """
    return plan_from_scenario(scenario, client_sizes, full_batch=full_batch_settings(scenario), build=build)


def scenario_plan_and_spend(
    scenario: Scenario,
    client_sizes: Sequence[int] | None = None,
    *,
    build: Callable[[], Any] | None = None,
) -> tuple[PrivacyPlan, Spend]:
    """:func:`scenario_plan` (same arguments) and what it spends (the run's curve and totals)."""
    plan = scenario_plan(scenario, client_sizes, build=build)
    return plan, spend_rounds(plan)
