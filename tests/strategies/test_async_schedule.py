"""The FedFix / async FedAvg / FedBuff / sync FedAvg event schedule against the spec's numbers (Fraboni et al.,
JMLR 2023, M = 10, F-80, p = 0.1, horizon 100, worked by hand from the paper's Algorithm), its reductions, and faults."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from fedsim.errors import ConfigError
from strategies.asynchronous import EventSchedule, f_x_durations, make_rule, to_ticks

M = 10
TAUS = [to_ticks(t) for t in f_x_durations(M, 80)]
P = [0.1] * M


def run(name, args=None, *, taus=TAUS, p=P, horizon=100.0, **kw):
    rule = make_rule(name, args or {}, clients_per_round=kw.pop("cohort", len(p)), population=len(p))
    schedule = EventSchedule(rule, p, taus, horizon=None if horizon is None else to_ticks(horizon), **kw)
    steps = list(schedule.steps())
    return schedule, steps[0], steps[1:]


def counts(steps, m=M):
    c = Counter(a.cid for s in steps for a in s.arrivals)
    return [c[i] for i in range(m)]


def test_f_x_profile_is_the_papers():
    taus = f_x_durations(10, 80)
    assert taus[0] == 1.0 and taus[-1] == pytest.approx(0.2)
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))
    assert f_x_durations(5, 0) == [1.0] * 5


@pytest.mark.parametrize(
    ("window", "multiples", "n_steps", "max_staleness"),
    [
        (0.5, [2, 2, 2, 2, 2, 2, 1, 1, 1, 1], 200, 1),
        (0.8, [2, 2, 2, 1, 1, 1, 1, 1, 1, 1], 125, 1),
        (0.2, [5, 5, 5, 4, 4, 3, 3, 2, 2, 1], 500, 4),
    ],
)
def test_fedfix_reproduces_the_spec(window, multiples, n_steps, max_staleness):
    schedule, _, steps = run("fedfix", {"window_s": window})
    assert [math.ceil(t / to_ticks(window)) for t in TAUS] == multiples
    assert schedule.d == pytest.approx([m * 0.1 for m in multiples])
    assert len(steps) == n_steps
    assert max(max(s.staleness, default=0) for s in steps) == max_staleness
    assert [s.tick for s in steps] == [(n + 1) * to_ticks(window) for n in range(n_steps)]  # t_n = (n+1)Δt
    got = counts(steps)
    for i, m in enumerate(multiples):  # a client taking m windows joins every m-th step
        assert got[i] == n_steps // m
    if window == 0.5:  # slow clients participate in exactly half the steps
        assert got[:6] == [n_steps // 2] * 6


def test_async_fedavg_weight_variant_reproduces_the_spec():
    schedule, _, steps = run("async_fedavg", {"variant": "weight"})
    expected_d = [2.1281, 1.9389, 1.7497, 1.5606, 1.3714, 1.1823, 0.9931, 0.8039, 0.6148, 0.4256]
    assert schedule.d == pytest.approx(expected_d, abs=1e-4)
    assert len(steps) == 2123
    assert counts(steps) == [100, 109, 121, 136, 155, 179, 214, 264, 346, 499]
    assert all(len(s.arrivals) == 1 for s in steps)
    # the time average of d_i·1[i ∈ S_n] is p_i: the condition for the federated optimum
    for i, c in enumerate(counts(steps)):
        assert schedule.d[i] * c / len(steps) == pytest.approx(0.1, rel=0.03)


def test_async_identical_variant_weighs_every_client_one():
    schedule, _, _ = run("async_fedavg", {"variant": "identical"}, horizon=5)
    assert schedule.d == [1.0] * M


def test_fedbuff_steps_every_c_returns_with_weight_one_over_c():
    schedule, _, steps = run("fedbuff", {"buffer": 5})
    assert schedule.d == [0.2] * M
    assert all(len(s.arrivals) == 5 for s in steps)
    ticks = [s.tick for s in steps]
    assert ticks == sorted(ticks)
    # each step's tick is the 5th return since the previous step
    for s in steps:
        assert s.tick == max(a.arrive for a in s.arrivals)


def test_f0_fedfix_with_a_window_at_least_tau_is_fedavg():
    taus = [to_ticks(1.0)] * M
    _, _, fix = run("fedfix", {"window_s": 1.0}, taus=taus, horizon=20)
    _, _, avg = run("fedavg_sync", taus=taus, horizon=20)
    assert len(fix) == len(avg) == 20
    for a, b in zip(fix, avg, strict=True):
        assert a.tick == b.tick and [x.cid for x in a.arrivals] == [x.cid for x in b.arrivals]
        assert a.weights == pytest.approx(b.weights)  # ⌈τ/Δt⌉·p_i = p_i
        assert a.staleness == b.staleness == [0] * M


def test_sync_fedavg_waits_for_the_slowest_client():
    _, _, steps = run("fedavg_sync", horizon=10)
    assert [s.tick for s in steps] == [(n + 1) * TAUS[0] for n in range(10)]
    assert all(sum(s.weights) == pytest.approx(1.0) for s in steps)


def test_sync_over_selection_keeps_the_first_k_and_drops_the_stragglers():
    _, start, steps = run("fedavg_sync", {"over_selection": 0.5}, cohort=4, horizon=5)
    assert len(start.dispatched) == 6
    for s in steps:
        assert len(s.arrivals) == 4 and len(s.dropped) == 2
        kept = max(a.arrive for a in s.arrivals)
        assert s.tick == kept  # the round ends when the K-th client returns
    picked = sorted(d.cid for d in start.dispatched)
    # the 4 fastest of the 6 started are kept (F-80: higher id = faster)
    assert sorted(a.cid for a in steps[0].arrivals) == picked[2:]


def test_sync_deadline_cuts_a_round_and_never_waits_forever():
    _, _, steps = run("fedavg_sync", {"deadline_s": 0.5}, horizon=5)
    for s in steps:
        assert s.tick - (s.index * to_ticks(0.5)) == to_ticks(0.5)
        assert sorted(a.cid for a in s.arrivals) == [6, 7, 8, 9]  # τ <= 0.5
        assert sorted(s.dropped) == [0, 1, 2, 3, 4, 5]


def test_failed_clients_are_dropped_counted_and_restarted():
    fails = {(3, 0)}  # client 3's first run fails
    _, _, steps = run("fedfix", {"window_s": 0.5}, horizon=5, fails=lambda cid, tick: (cid, tick) in fails)
    first = steps[1]  # client 3 (τ = 0.733) would have arrived for step 1
    assert 3 in first.dropped and 3 not in [a.cid for a in first.arrivals]
    assert any(3 in [a.cid for a in s.arrivals] for s in steps[2:])  # restarted, later kept


def test_unavailable_clients_are_not_started_until_online():
    def online(cid, tick):
        return cid != 9 or tick >= to_ticks(2.0)

    _, start, steps = run("async_fedavg", horizon=5, online=online)
    assert 9 not in [d.cid for d in start.dispatched]
    first_start = min(d.start for s in steps for d in s.dispatched if d.cid == 9)
    assert first_start >= to_ticks(2.0)


def test_a_population_that_is_all_offline_still_advances():
    _, _, steps = run("fedbuff", {"buffer": 2}, horizon=3, online=lambda cid, tick: False)
    assert steps and all(not s.arrivals for s in steps) and steps[-1].tick >= to_ticks(3)


@pytest.mark.parametrize(
    ("name", "args", "field"),
    [
        ("fedfix", {"window_s": 0}, "strategy.args.window_s"),
        ("fedbuff", {"buffer": 0}, "strategy.args.buffer"),
        ("fedbuff", {"buffer": 11}, "strategy.args.buffer"),
        ("async_fedavg", {"variant": "other"}, "strategy.args.variant"),
        ("fedavg_sync", {"over_selection": -1}, "strategy.args.over_selection"),
        ("fedfix", {"buffer": 3}, "strategy.args.buffer"),
        ("fedfix", {"weights": "size"}, "strategy.args.weights"),
    ],
)
def test_bad_arguments_name_the_field(name, args, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_rule(name, args, clients_per_round=10, population=10)


def test_strategy_args_horizon_and_uniform_weights():
    from fedsim.scenario.schema import StrategyConfig
    from strategies import build_strategy

    cfg = StrategyConfig(name="fedbuff", clients_per_round=10, args={"buffer": 5, "horizon_s": 10, "weights": "uniform"})
    strategy = build_strategy(cfg, 10)
    assert strategy.p([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == [0.1] * 10  # uniform, whatever the sizes
    assert build_strategy(StrategyConfig(name="fedbuff", args={"buffer": 5}), 10).p([1] * 9 + [11]) == pytest.approx(
        [0.05] * 9 + [0.55]
    )  # data: proportional to examples
    steps = list(strategy.schedule(examples=[1] * M, durations=TAUS).steps())[1:]
    assert steps[-1].tick >= to_ticks(10) > steps[-2].tick  # stops at the first step at or past the horizon
    with pytest.raises(ConfigError, match=r"strategy\.args\.horizon_s"):
        build_strategy(StrategyConfig(name="fedfix", args={"horizon_s": -1}), 10)
