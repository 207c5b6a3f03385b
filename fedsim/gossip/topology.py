"""Communication graphs for gossip learning, built with networkx from a small, validated config.

Why this module exists: a decentralised run has no server; who talks to whom is the whole design. The graph is a
pure function of ``(kind, nodes, args, seed)``, so every process that builds it gets the same neighbours. A graph
that is not connected cannot reach consensus and is refused with a :class:`~fedsim.errors.ConfigError` naming
the field, as is any bad argument or unreadable edge-list file.

Kinds: ``ring``; ``regular`` (random k-regular, ``k``); ``erdos_renyi`` (``p``); ``watts_strogatz`` (small world,
``k``, ``p``); ``full``; ``star`` (node 0 is the hub: the federated-learning comparison); ``edges`` (``path`` of a
file with one ``u v`` or ``u,v`` pair per line, ``#`` comments, node ids ``0..nodes-1``).

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

from fedsim.errors import ConfigError, UnknownNameError

ARGS: dict[str, tuple[str, ...]] = {
    "ring": (),
    "regular": ("k",),
    "erdos_renyi": ("p",),
    "watts_strogatz": ("k", "p"),
    "full": (),
    "star": (),
    "edges": ("path",),
}
"""Each topology kind and the arguments it takes (all required)."""

_SPLIT = re.compile(r"[,\s]+")


def _int_arg(field: str, value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(field, what, value)
    return value


def _prob_arg(field: str, value: Any, *, zero_ok: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0.0 <= value <= 1.0) or (value == 0.0 and not zero_ok):
        raise ConfigError(field, "a probability in [0, 1]" if zero_ok else "a probability in (0, 1]", value)
    return float(value)


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
    if kind not in ARGS:
        raise UnknownNameError(f"{field}.kind", kind, list(ARGS))
    args = dict(args or {})
    for key in args:
        if key not in ARGS[kind]:
            accepted = ", ".join(ARGS[kind]) or "no arguments"
            raise ConfigError(f"{field}.{key}", f"an argument of topology {kind!r} ({accepted})", key)
    for key in ARGS[kind]:
        if key not in args:
            raise ConfigError(f"{field}.{key}", f"given for topology {kind!r}")
    min_nodes = 3 if kind in ("ring", "watts_strogatz") else 2
    nodes = _int_arg(f"{field}.nodes", nodes, min_nodes, 10**7, f"an integer >= {min_nodes}")
    if kind == "ring":
        graph = nx.cycle_graph(nodes)
    elif kind == "regular":
        k = _int_arg(f"{field}.k", args["k"], 1, nodes - 1, f"an integer in [1, {nodes - 1}]")
        if (k * nodes) % 2:
            raise ConfigError(f"{field}.k", f"even when the number of nodes is odd ({nodes})", k)
        graph = nx.random_regular_graph(k, nodes, seed=seed)
    elif kind == "erdos_renyi":
        graph = nx.gnp_random_graph(nodes, _prob_arg(f"{field}.p", args["p"], zero_ok=False), seed=seed)
    elif kind == "watts_strogatz":
        k = _int_arg(f"{field}.k", args["k"], 2, nodes - 1, f"an integer in [2, {nodes - 1}]")
        p = _prob_arg(f"{field}.p", args["p"], zero_ok=True)
        graph = nx.watts_strogatz_graph(nodes, k, p, seed=seed)
    elif kind == "full":
        graph = nx.complete_graph(nodes)
    elif kind == "star":
        graph = nx.star_graph(nodes - 1)  # hub 0, leaves 1..nodes-1
    else:
        path = args["path"]
        if not isinstance(path, (str, Path)):
            raise ConfigError(f"{field}.path", "a file path", path)
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
