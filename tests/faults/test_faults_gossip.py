"""``faults.nonfinite`` in a gossip shard: a node whose training gives a non-finite model keeps its previous model,
sends nothing at that tick and is counted in ``dropped_nonfinite``; the other nodes train exactly as without the
fault, and a split of the nodes into shards counts the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.data import FederatedData
from fedsim.gossip.schedule import Schedule
from fedsim.gossip.shard import GossipShard, ProtocolConfig

N = 12


def tiny_data(per_node: int = 6) -> FederatedData:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N * per_node, 3, generator=g), torch.randint(0, 2, (N * per_node,), generator=g)
    parts = tuple(np.arange(i * per_node, (i + 1) * per_node) for i in range(N))
    return FederatedData(x, y, x[:8], y[:8], parts, 2, (3,))


def ring() -> list[np.ndarray]:
    return [np.array([(i - 1) % N, (i + 1) % N]) for i in range(N)]


def initial() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    models = [nn.Linear(3, 2) for _ in range(N)]
    return {
        k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k in ("weight", "bias")
    }


def shard(owned, nonfinite: float, unit: str, mode: str = "push") -> GossipShard:
    owned = np.asarray(owned, dtype=np.int64)
    protocol = ProtocolConfig(
        rule="plain", beta=0.5, mode=mode, unit=unit, optimizer_args={"lr": 0.5}, batch_size=2
    )
    schedule = Schedule(seed=7, interval=(1, 1), nonfinite=nonfinite)  # every node has an event at every tick
    params = {k: v[torch.from_numpy(owned)] for k, v in initial().items()}
    return GossipShard(nn.Linear(3, 2), tiny_data(), ring(), owned, params, protocol, schedule)


@pytest.mark.parametrize("unit", ["minibatch", "epoch"])
def test_a_node_with_a_nonfinite_update_keeps_its_model_sends_nothing_and_is_counted(unit):
    faulty, clean = shard(range(N), 0.4, unit), shard(range(N), 0.0, unit)
    before = {k: v.clone() for k, v in faulty.params.items()}
    drawn = faulty.schedule.nonfinite_at(np.arange(N), np.zeros(N, dtype=np.int64))
    assert 0 < drawn.sum() < N  # this seed draws some nodes at their first event, not all
    faulty.phase_a(1)
    clean.phase_a(1)
    for k in before:
        assert torch.equal(faulty.params[k][drawn], before[k][drawn])  # the previous model, unchanged
        assert torch.equal(faulty.params[k][~drawn], clean.params[k][~drawn])  # the others as without faults
        assert torch.isfinite(faulty.params[k]).all()
    assert faulty.counts["dropped_nonfinite"] == int(drawn.sum())
    assert faulty.counts["trained"] == N - int(drawn.sum()) and clean.counts["trained"] == N
    assert set(faulty.pending.senders.tolist()) == set(np.flatnonzero(~drawn).tolist())
    assert set(clean.pending.senders.tolist()) == set(range(N))


def test_a_dropped_node_answers_no_pull_at_that_tick():
    s = shard(range(N), 0.4, "minibatch", mode="pull")
    drawn = s.schedule.nonfinite_at(np.arange(N), np.zeros(N, dtype=np.int64))
    s.phase_a(1)
    assert set(s.pending.senders.tolist()) == set(np.flatnonzero(~drawn).tolist())


def test_the_counts_and_models_do_not_depend_on_the_split_into_shards():
    whole = shard(range(N), 0.4, "minibatch")
    halves = [shard(range(0, N, 2), 0.4, "minibatch"), shard(range(1, N, 2), 0.4, "minibatch")]
    for tick in range(1, 6):
        whole.phase_a(tick)
        whole.phase_b(tick)
        mail = [h.phase_a(tick) for h in halves]
        halves[0].phase_b(tick, [mail[1]])
        halves[1].phase_b(tick, [mail[0]])
    for key in ("trained", "dropped_nonfinite", "sent", "merges"):
        assert whole.counts[key] == sum(h.counts[key] for h in halves), key
    assert whole.counts["dropped_nonfinite"] > 0
    for k, v in whole.params.items():
        torch.testing.assert_close(v[0::2], halves[0].params[k])
        torch.testing.assert_close(v[1::2], halves[1].params[k])


def test_the_count_survives_a_saved_and_restored_shard():
    s = shard(range(N), 0.4, "minibatch")
    s.phase_a(1)
    restored = shard(range(N), 0.4, "minibatch")
    restored.load_state(s.state())
    assert restored.counts == s.counts and restored.counts["dropped_nonfinite"] > 0
