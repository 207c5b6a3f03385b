"""The sensitivity every adaptive-clipping round records (``dp_count_sensitivity``) is that of the count the server
actually releases. Oracle: the released count itself (``centred_unclipped_count``), computed with and without one
client, for any cohort and any client (hypothesis); and the engine's row field against that measured shift."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.engine.sync_loop import mechanism_fields
from fedsim.scenario import parse_scenario
from strategies import build_strategy
from strategies.base import RoundPlan
from strategies.dp import CENTRED_COUNT_SENSITIVITY, ClientLevelDP, centred_unclipped_count
from strategies.fedavg import FedAvg

norm = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(norm, max_size=30), norm, st.floats(min_value=0.01, max_value=5.0))
def test_adding_or_removing_one_client_moves_the_released_count_by_the_recorded_sensitivity(
    norms, added, clip
):
    without = centred_unclipped_count(np.asarray(norms), clip)
    with_one = centred_unclipped_count(np.asarray([*norms, added]), clip)
    assert abs(with_one - without) == CENTRED_COUNT_SENSITIVITY == 0.5  # whatever the client's bit


def test_an_uncentred_count_would_move_by_one():
    # what the ½ guards against: Σ b_i moves by 1 when a client under the clip joins
    assert float((np.asarray([0.2, 3.0, 0.5]) <= 1.0).sum() - (np.asarray([3.0, 0.5]) <= 1.0).sum()) == 1.0


def test_the_engine_records_the_released_counts_sensitivity():
    sc = parse_scenario(
        {
            "name": "adaptive",
            "rounds": 2,
            "data": {"dataset": "digits", "partitioner": "iid", "partitioner_args": {}},
            "population": {"clients": 40},
            "strategy": {"name": "fedavg", "clients_per_round": 10},
            "privacy": {
                "level": "client",
                "noise_multiplier": 1.0,
                "per_layer": "adaptive",
                "accountants": ["rdp"],
            },
        }
    )
    inner = build_strategy(sc.strategy, sc.population.clients)
    assert isinstance(inner, FedAvg)
    import torch

    dp = ClientLevelDP(
        inner=inner, population=40, noise_multiplier=1.0, clip=1.0, generator=torch.Generator(), adaptive=True
    )
    fields = mechanism_fields(
        sc.model_dump(mode="json"), dp, RoundPlan(client_ids=(1, 2), config={"clip": 1.0})
    )
    shift = abs(
        centred_unclipped_count(np.asarray([0.5, 2.0, 0.1]), 1.0)
        - centred_unclipped_count(np.asarray([2.0, 0.1]), 1.0)
    )
    assert fields["dp_count_sensitivity"] == shift
