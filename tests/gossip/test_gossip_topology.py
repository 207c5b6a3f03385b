"""Topologies: each kind's defining degrees (closed form), determinism in the seed, and one-line ConfigErrors."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from fedsim.errors import ConfigError
from fedsim.gossip.topology import build_topology, neighbour_lists


@pytest.mark.parametrize(
    ("kind", "args", "degrees"),
    [
        ("ring", {}, lambda n: [2] * n),
        ("regular", {"k": 8}, lambda n: [8] * n),
        ("full", {}, lambda n: [n - 1] * n),
        ("star", {}, lambda n: [n - 1] + [1] * (n - 1)),
    ],
)
def test_degrees_match_the_definition(kind, args, degrees):
    graph = build_topology(kind, nodes=20, args=args, seed=3)
    assert sorted(graph.nodes) == list(range(20))
    assert [d for _, d in sorted(graph.degree)] == degrees(20)
    assert nx.is_connected(graph)


@pytest.mark.parametrize(
    ("kind", "args"),
    [("regular", {"k": 4}), ("erdos_renyi", {"p": 0.3}), ("watts_strogatz", {"k": 4, "p": 0.3})],
)
def test_random_kinds_are_deterministic_in_the_seed(kind, args):
    edges = lambda seed: sorted(build_topology(kind, nodes=30, args=args, seed=seed).edges)  # noqa: E731
    assert edges(1) == edges(1)
    assert edges(1) != edges(2)


def test_watts_strogatz_without_rewiring_is_the_ring_lattice():
    graph = build_topology("watts_strogatz", nodes=10, args={"k": 4, "p": 0.0}, seed=0)
    expected = {tuple(sorted((i, (i + d) % 10))) for i in range(10) for d in (1, 2)}  # closed form
    assert {tuple(sorted(e)) for e in graph.edges} == expected


def test_edge_list_file_in_both_formats(tmp_path):
    path = tmp_path / "ring.txt"
    path.write_text("# a 4-ring\n0 1\n1,2\n\n2\t3  # tab\n3, 0\n")
    graph = build_topology("edges", nodes=4, args={"path": str(path)})
    assert nx.utils.graphs_equal(graph, nx.cycle_graph(4))


def test_neighbour_lists_are_sorted_arrays_of_the_graph():
    graph = build_topology("regular", nodes=12, args={"k": 3}, seed=0)
    lists = neighbour_lists(graph)
    for i, nb in enumerate(lists):
        assert nb.dtype == np.int64
        assert list(nb) == sorted(graph.neighbors(i))


@pytest.mark.parametrize(
    ("kind", "args", "nodes", "field"),
    [
        ("regular", {"k": 3}, 11, "gossip.topology.k"),  # n·k odd
        ("regular", {"k": 11}, 11, "gossip.topology.k"),  # k >= n
        ("regular", {"k": 2.0}, 10, "gossip.topology.k"),
        ("edges", {}, 10, "gossip.topology.path"),  # missing (regular without k takes its default, 8)
        ("erdos_renyi", {"p": 0.0}, 10, "gossip.topology.p"),
        ("erdos_renyi", {"p": 1.5}, 10, "gossip.topology.p"),
        ("erdos_renyi", {"p": 0.01}, 40, "gossip.topology"),  # disconnected
        ("regular", {"k": 1}, 10, "gossip.topology"),  # a perfect matching: disconnected
        ("ring", {"k": 2}, 10, "gossip.topology.k"),  # unknown argument
        ("hypercube", {}, 10, "gossip.topology.kind"),
        ("ring", {}, 2, "gossip.topology.nodes"),
        ("edges", {"path": "/nonexistent/edges.txt"}, 4, "gossip.topology.path"),
    ],
)
def test_bad_configs_name_the_field(kind, args, nodes, field):
    with pytest.raises(ConfigError) as err:
        build_topology(kind, nodes=nodes, args=args, seed=0)
    assert err.value.field == field
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("0 1\n1 x\n", "gossip.topology.path (line 2)"),
        ("0 1 2\n", "gossip.topology.path (line 1)"),
        ("0 1\n1 7\n", "gossip.topology.path (line 2)"),
        ("0 0\n", "gossip.topology.path (line 1)"),
        ("0 1\n2 3\n", "gossip.topology"),  # two components
    ],
)
def test_malformed_or_disconnected_edge_files(tmp_path, text, field):
    path = tmp_path / "e.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        build_topology("edges", nodes=4, args={"path": path})
    assert err.value.field == field
