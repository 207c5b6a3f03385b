"""Communication graphs for gossip learning, built with networkx from a small, validated config.

Why this module exists: a decentralised run has no server; who talks to whom is the whole design. The graph is a
pure function of ``(kind, nodes, args, seed)``, so every process that builds it gets the same neighbours. A graph
that is not connected cannot reach consensus and is refused with a :class:`~fedsim.errors.ConfigError` naming
the field, as is any bad argument or unreadable edge-list file.

Kinds (each with its own defaults, ``SPECS``): ``ring``; ``regular`` (random k-regular, ``k``: 8, the paper's);
``erdos_renyi`` (``p``: 2·ln(nodes)/nodes, twice the connectivity threshold); ``watts_strogatz`` (small world,
``k``: 4, ``p``: 0.1); ``full``; ``star`` (node 0 is the hub: the federated-learning comparison); ``edges``
(``path``, required, of a file with one ``u v`` or ``u,v`` pair per line, ``#`` comments, node ids ``0..nodes-1``).
Arguments are checked without building the graph (``resolve_topology_args``, ``check_topology_args``);
connectivity needs the graph and is checked when it is built.

References:
    Tian, Al-Ars, Kitsak, Hofstee, "Vanishing Variance Problem in Fully Decentralized Neural-Network Systems",
    arXiv 2404.04616, 2024 (random 8-regular graphs of 50 nodes, fully connected, custom edge lists, star = FL).
    Hagberg, Schult, Swart, "Exploring network structure, dynamics, and function using NetworkX", SciPy 2008.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from fedsim.argspec import REQUIRED, ArgSpec, custom, num
from fedsim.errors import ConfigError, UnknownNameError


def _path_arg(field: str, value: Any) -> str:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(field, "a file path", value)
    return str(value)


SPECS: dict[str, ArgSpec] = {
    "ring": ArgSpec(),
    "regular": ArgSpec((num("k", 8, integer=True, low=1),)),
    "erdos_renyi": ArgSpec(
        (num("p", None, low=0, low_open=True, high=1, default_doc="min(1, 2·ln(nodes)/nodes)"),)
    ),
    "watts_strogatz": ArgSpec((num("k", 4, integer=True, low=2), num("p", 0.1, low=0, high=1))),
    "full": ArgSpec(),
    "star": ArgSpec(),
    "edges": ArgSpec((custom("path", REQUIRED, _path_arg, "a file path"),)),
}
"""Each topology kind's arguments: accepted keys, ranges and the kind's own defaults."""

ARGS: dict[str, tuple[str, ...]] = {kind: spec.names for kind, spec in SPECS.items()}
"""Each topology kind and the arguments it takes."""


def resolve_topology_args(
    kind: str, args: Mapping[str, Any] | None, *, field: str = "gossip.topology"
) -> dict:
    """The arguments of ``kind`` checked and completed with its defaults (builds nothing)."""
    if kind not in SPECS:
        raise UnknownNameError(f"{field}.kind", kind, list(SPECS))
    return SPECS[kind].resolve(args, field=field, owner=f"topology {kind!r}")


def min_nodes(kind: str) -> int:
    """The fewest nodes a graph of ``kind`` can have."""
    return 3 if kind in ("ring", "watts_strogatz") else 2


def check_topology_args(
    kind: str, nodes: int, args: Mapping[str, Any], *, field: str = "gossip.topology"
) -> dict:
    """``args`` resolved and checked against ``nodes`` (degree below the node count, even degree sum), without
    building the graph; a derived ``p`` is filled in. Returns the arguments the builder uses."""
    args = resolve_topology_args(kind, args, field=field)
    low = min_nodes(kind)
    _int_arg(f"{field}.nodes", nodes, low, 10**7, f"an integer >= {low} (and at most 10^7)")
    if kind == "regular":
        k = _int_arg(f"{field}.k", args["k"], 1, nodes - 1, f"an integer in [1, {nodes - 1}]")
        if (k * nodes) % 2:
            raise ConfigError(f"{field}.k", f"even when the number of nodes is odd ({nodes})", k)
    elif kind == "watts_strogatz":
        _int_arg(f"{field}.k", args["k"], 2, nodes - 1, f"an integer in [2, {nodes - 1}]")
    elif kind == "erdos_renyi" and args["p"] is None:
        args = {**args, "p": min(1.0, 2.0 * math.log(nodes) / nodes)}
    return args


_SPLIT = re.compile(r"[,\s]+")


def _int_arg(field: str, value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(field, what, value)
    return value


def read_edge_list(
    path: str | Path, *, nodes: int, field: str = "gossip.topology.path"
) -> list[tuple[int, int]]:
    """Pairs ``(u, v)`` from a file of ``u v`` / ``u,v`` lines (blank lines and ``#`` comments skipped).

    Raises:
        ConfigError: a missing file, a line that is not two integers, an id outside ``[0, nodes)``, a self-loop.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(field, "an existing edge-list file", str(path))
    pairs = []
    for lineno, raw in enumerate(p.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = [t for t in _SPLIT.split(line) if t]
        if len(tokens) != 2 or not all(re.fullmatch(r"\d+", t) for t in tokens):
            raise ConfigError(
                f"{field} (line {lineno})", "two non-negative integer node ids 'u v' or 'u,v'", raw
            )
        u, v = int(tokens[0]), int(tokens[1])
        if u >= nodes or v >= nodes:
            raise ConfigError(f"{field} (line {lineno})", f"node ids in [0, {nodes})", raw)
        if u == v:
            raise ConfigError(f"{field} (line {lineno})", "an edge between two different nodes", raw)
        pairs.append((u, v))
    return pairs


def build_topology(
    kind: str,
    *,
    nodes: int,
    args: Mapping[str, Any] | None = None,
    seed: int = 0,
    field: str = "gossip.topology",
) -> nx.Graph:
    """The undirected, connected graph on nodes ``0..nodes-1`` of ``kind`` with ``args``, deterministic in ``seed``.

    Raises:
        ConfigError: an unknown kind or argument, an argument out of range, an unreadable edge list, or a graph
            that is not connected (names ``<field>.<arg>`` or ``<field>``).
    """
    args = check_topology_args(kind, nodes, args, field=field)
    if kind == "ring":
        graph = nx.cycle_graph(nodes)
    elif kind == "regular":
        graph = nx.random_regular_graph(args["k"], nodes, seed=seed)
    elif kind == "erdos_renyi":
        graph = nx.gnp_random_graph(nodes, args["p"], seed=seed)
    elif kind == "watts_strogatz":
        graph = nx.watts_strogatz_graph(nodes, args["k"], args["p"], seed=seed)
    elif kind == "full":
        graph = nx.complete_graph(nodes)
    elif kind == "star":
        graph = nx.star_graph(nodes - 1)  # hub 0, leaves 1..nodes-1
    else:
        path = args["path"]
        graph = nx.Graph()
        graph.add_nodes_from(range(nodes))
        graph.add_edges_from(read_edge_list(path, nodes=nodes, field=f"{field}.path"))
    if not nx.is_connected(graph):
        parts = nx.number_connected_components(graph)
        raise ConfigError(
            field, f"a connected graph ({kind} with {args} and seed {seed} has {parts} components)", kind
        )
    return graph


def neighbour_lists(graph: nx.Graph) -> list[np.ndarray]:
    """Each node's neighbours as a sorted int64 array, indexed by node id ``0..n-1``."""
    n = graph.number_of_nodes()
    if sorted(graph.nodes) != list(range(n)):
        raise ValueError(f"graph nodes must be 0..{n - 1}. Got {sorted(graph.nodes)[:5]}...")
    return [np.array(sorted(graph.neighbors(i)), dtype=np.int64) for i in range(n)]
