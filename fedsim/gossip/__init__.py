"""Decentralised gossip learning: topologies, merge rules (plain and variance-corrected) and a Ray-free simulator.

Why this package exists: gossip learning has no server and no global model; its state is the nodes' models plus
the communication graph. This package holds the parts that need neither Flower nor Ray, so they can be tested
and studied in one process; it imports torch, numpy, networkx and the gradient core only.

References:
    Tian, Al-Ars, Kitsak, Hofstee, "Vanishing Variance Problem in Fully Decentralized Neural-Network Systems",
    arXiv 2404.04616, 2024.
"""

from fedsim.gossip.merge import (
    DEFAULT_EPS,
    RULES,
    corrected_average,
    is_corrected,
    merge_params,
    merge_transform,
    plain_average,
)
from fedsim.gossip.simulator import GossipConfig, GossipSimulator, independent_init
from fedsim.gossip.topology import ARGS as TOPOLOGIES
from fedsim.gossip.topology import build_topology, neighbour_lists, read_edge_list

__all__ = [
    "DEFAULT_EPS",
    "RULES",
    "TOPOLOGIES",
    "GossipConfig",
    "GossipSimulator",
    "build_topology",
    "corrected_average",
    "independent_init",
    "is_corrected",
    "merge_params",
    "merge_transform",
    "neighbour_lists",
    "plain_average",
    "read_edge_list",
]
