"""``faults.stragglers`` and ``faults.crash`` reach the loops through ``DeviceProfiles.from_scenario``: a straggler's
duration is exactly ``slowdown`` times its profile's, the others' are unchanged, the crash rate is ``faults.crash``;
the gossip schedule stretches a straggler's gaps by the same factor."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fedsim.engine.gossip_network import build_network
from fedsim.engine.setup import build_data, build_initial_model
from fedsim.faults import straggler_mask
from fedsim.gossip.schedule import Schedule
from fedsim.randomness import Stream, generator
from fedsim.scenario import parse_scenario
from fedsim.scenario.devices import DeviceProfiles

RAW = {
    "name": "slow",
    "seed": 9,
    "population": {
        "clients": 40,
        "devices": {
            "speed": {"dist": "lognormal", "mean": 100.0, "sigma": 0.5},
            "bandwidth": {"dist": "uniform", "low": 1e6, "high": 1e7},
        },
    },
    "strategy": {"clients_per_round": 10},
    "faults": {"crash": 0.15, "stragglers": {"fraction": 0.25, "slowdown": 3.5}},
}


def scenario(**faults):
    raw = copy.deepcopy(RAW)
    raw["faults"] |= faults
    return parse_scenario(raw)


@pytest.mark.parametrize("profile", [None, "F-80"])
def test_a_stragglers_duration_is_exactly_slowdown_times_its_profiles(profile):
    raw = copy.deepcopy(RAW)
    raw["population"]["devices"]["profile"] = profile
    sc = parse_scenario(raw)
    profiles = DeviceProfiles.from_scenario(sc)
    base = DeviceProfiles.sample(sc.population.devices, 40, generator(sc.seed, Stream.DEVICE))  # the old call
    assert np.array_equal(profiles.speed, base.speed) and np.array_equal(profiles.bandwidth, base.bandwidth)
    assert profiles.failure == base.failure == 0.15
    assert profiles.straggler is not None and int(profiles.straggler.sum()) == 10
    for cid in range(40):
        kw = {"examples": 7 + cid, "epochs": 2, "model_bytes": 4096}
        factor = 3.5 if profiles.straggler[cid] else 1.0
        assert profiles.duration(cid, **kw) == base.duration(cid, **kw) * factor
    assert np.array_equal(profiles.slowdowns(np.arange(40)), np.where(profiles.straggler, 3.5, 1.0))


def test_the_stragglers_are_the_seeds_draw_whatever_the_workers():
    one, many = scenario(), parse_scenario({**copy.deepcopy(RAW), "engine": {"workers": 3}})
    a, b = DeviceProfiles.from_scenario(one).straggler, DeviceProfiles.from_scenario(many).straggler
    assert a is not None and b is not None and np.array_equal(a, b)
    assert np.array_equal(a, straggler_mask(9, 40, 0.25))


@pytest.mark.parametrize("faults", [{"stragglers": {"fraction": 0.0, "slowdown": 3.0}}, {"stragglers": {}}])
def test_without_stragglers_durations_are_the_profiles(faults):
    sc = scenario(**faults)
    profiles = DeviceProfiles.from_scenario(sc)
    base = DeviceProfiles.sample(sc.population.devices, 40, generator(sc.seed, Stream.DEVICE))
    assert profiles.straggler is None and profiles.slowdown == 1.0
    kw = {"examples": 10, "epochs": 1, "model_bytes": 100}
    assert all(profiles.duration(c, **kw) == base.duration(c, **kw) for c in range(40))


@pytest.mark.parametrize("fixed", [None, np.arange(1, 21)])
def test_a_gossip_stragglers_gaps_are_stretched_by_the_slowdown(fixed):
    nodes, events = np.arange(20), np.arange(20) % 3
    mask = straggler_mask(4, 20, 0.3)
    assert mask is not None
    plain = Schedule(seed=2, interval=(8, 12), fixed=fixed)
    slow = Schedule(seed=2, interval=(8, 12), fixed=fixed, straggler=mask, slowdown=2.5)
    for got, want in (
        (slow.gaps(nodes, events), plain.gaps(nodes, events)),
        (slow.first_events(nodes), plain.first_events(nodes)),
    ):
        assert np.array_equal(got[~mask], want[~mask])
        assert np.array_equal(got[mask], np.ceil(want[mask] * 2.5).astype(np.int64))


def test_the_gossip_network_takes_crash_nonfinite_and_stragglers_from_the_faults_block():
    raw = copy.deepcopy(RAW)
    raw.update(
        data={"dataset": "digits", "partitioner": "iid"},
        model={"name": "mlp", "args": {"hidden": [4]}},
        strategy={"name": "gossip", "clients_per_round": 40},
        gossip={"topology": {"kind": "ring"}},
    )
    raw["faults"]["nonfinite"] = 0.05
    sc = parse_scenario(raw)
    data = build_data(sc)
    schedule = build_network(sc, data, build_initial_model(sc, data)).schedule
    assert (schedule.failure, schedule.nonfinite, schedule.slowdown) == (0.15, 0.05, 3.5)
    assert schedule.straggler is not None
    assert np.array_equal(schedule.straggler, DeviceProfiles.from_scenario(sc).straggler)


def test_the_schedule_refuses_bad_fault_settings_naming_the_fault_field():
    from fedsim.errors import ConfigError

    for kwargs, field in (
        ({"failure": 1.0}, "faults.crash"),
        ({"nonfinite": -0.1}, "faults.nonfinite"),
        ({"slowdown": 0.5}, "faults.stragglers.slowdown"),
    ):
        with pytest.raises(ConfigError) as err:
            Schedule(**kwargs)
        assert err.value.field == field
