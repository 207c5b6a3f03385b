"""Where a round's logical clients run: sharded over simulation workers, or each on the device that owns it.

In simulation a worker (a SuperNode) hosts a share of the population by a stable rule (``cid % workers``). In
deployment each SuperNode hosts exactly one logical client: the partition its ``--node-config
"partition-id=K num-partitions=N"`` names (the keys Flower's own examples use). The worker reports its node
config in the prepare reply; the engine then sends client K only to the node that owns partition K, and a
client without a node cannot be selected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict

from fedsim.errors import EngineError

NODE_RECORD = "fedsim.node"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
PLACEMENTS = ("auto", "shard", "partition")


@dataclass(frozen=True)
class NodeIdentity:
    """What a node says about itself: the partition it owns (None in simulation) and of how many."""

    partition_id: int | None = None
    num_partitions: int | None = None


def add_node_identity(content: RecordDict, node_config: Mapping[str, object]) -> RecordDict:
    """Worker side: put the node's ``partition-id`` / ``num-partitions`` (when set) into a prepare reply."""
    record = ConfigRecord(
        {k: int(node_config[k]) for k in (PARTITION_ID, NUM_PARTITIONS) if k in node_config}  # type: ignore[call-overload]
    )
    content[NODE_RECORD] = record
    return content


def read_node_identity(content: RecordDict) -> NodeIdentity:
    """Server side: the identity a prepare reply carries (empty for workers that report none)."""
    if NODE_RECORD not in content.config_records:
        return NodeIdentity()
    record = content.config_records[NODE_RECORD]
    get = lambda k: int(record[k]) if k in record else None  # type: ignore[arg-type]  # noqa: E731
    return NodeIdentity(partition_id=get(PARTITION_ID), num_partitions=get(NUM_PARTITIONS))


def _owns_one_client_each(identities: Mapping[int, NodeIdentity], population: int) -> bool:
    ids = [i.partition_id for i in identities.values()]
    return (
        all(i.partition_id is not None and i.num_partitions == population for i in identities.values())
        and len(set(ids)) == len(ids)
        and all(0 <= p < population for p in ids if p is not None)
    )


def partition_owners(
    identities: Mapping[int, NodeIdentity], *, population: int, mode: str
) -> dict[int, int] | None:
    """Logical client -> the node that owns it, or None to shard clients over the nodes (simulation).

    ``mode``: ``shard``; ``partition`` (every node must own a distinct partition of this population);
    ``auto`` = ``partition`` when every node reports one with ``num-partitions`` equal to the population, else
    ``shard`` (e.g. ``flwr run .`` in simulation, whose nodes split a different number of partitions).

    Raises:
        EngineError: ``partition`` was asked for and a node's identity does not fit it.
    """
    if mode not in PLACEMENTS:
        raise EngineError(f"placement must be one of {', '.join(PLACEMENTS)}. Got {mode!r}.")
    if mode == "shard" or (mode == "auto" and not _owns_one_client_each(identities, population)):
        return None
    owners: dict[int, int] = {}
    for node, ident in sorted(identities.items()):
        pid = ident.partition_id
        if pid is None or ident.num_partitions not in (None, population):
            raise EngineError(
                f"node {node}: --node-config must be 'partition-id=K num-partitions={population}' "
                f"(the scenario's population.clients). Got partition-id={pid}, num-partitions={ident.num_partitions}."
            )
        if not 0 <= pid < population:
            raise EngineError(f"node {node}: partition-id must be in [0, {population}). Got {pid}.")
        if pid in owners:
            raise EngineError(
                f"nodes {owners[pid]} and {node} both have partition-id={pid}; each needs its own."
            )
        owners[pid] = node
    return owners


def shard(client_ids: Iterable[int], node_ids: Sequence[int]) -> dict[int, list[int]]:
    """Stable sharding rule: logical client ``cid`` lives on worker ``node_ids[cid % len(node_ids)]``."""
    out: dict[int, list[int]] = {n: [] for n in node_ids}
    for cid in client_ids:
        out[node_ids[cid % len(node_ids)]].append(int(cid))
    return out


def assign(
    client_ids: Iterable[int], node_ids: Sequence[int], owners: Mapping[int, int] | None
) -> dict[int, list[int]]:
    """The clients each node trains this round: by ``owners`` when given, else by :func:`shard`."""
    if owners is None:
        return shard(client_ids, node_ids)
    by_node: dict[int, list[int]] = {}
    for cid in client_ids:
        by_node.setdefault(owners[int(cid)], []).append(int(cid))
    return by_node
