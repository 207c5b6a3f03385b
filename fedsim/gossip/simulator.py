"""An in-process gossip-learning simulator on an integer virtual clock, with every node model stacked ``[N, ...]``.

Why this module exists: gossip learning has no global model; its state is the nodes' models plus the topology. This
module runs the authors' protocol without Ray or Flower, so merge rules and topologies can be studied (and tested)
on one machine at 1000 nodes: each online node trains one mini-batch every U[lo, hi] ticks (seeded), pushes its
model to its online neighbours' buffers, and merges when its buffer holds as many models as it has neighbours, or
when ``timeout`` ticks have passed since its last merge and its buffer is not empty (so no merge waits forever);
then the buffer is cleared. All nodes whose training event falls on one tick train together in one
``vmap(grad_and_value)`` call; all nodes that merge on one tick merge together (padded, masked).

Conventions: a buffer holds messages, not senders (a neighbour that trains twice before the merge fills two
slots). At each of its training events a node is online with probability ``availability`` until its next event;
an offline node neither trains, sends, receives nor merges. Within a tick: train, push, merge, then evaluate.
The client optimizer is a gradient-core chain (``clients.optimizers``) re-initialised at every step, so only
stateless optimizers (plain SGD) are exact. Models must have no buffers (no BatchNorm), as on the vectorised
engine path. Evaluation (every ``eval_every`` ticks, from tick 0) reports the mean/std/min/max of node test
accuracy, the accuracy of the average of all node models, the consensus distance (mean L2 distance of node models
to their average) and each layer's weight variance averaged over nodes.

References:
    Tian, Al-Ars, Kitsak, Hofstee, "Vanishing Variance Problem in Fully Decentralized Neural-Network Systems",
    arXiv 2404.04616, 2024 (the protocol: one mini-batch per 8-12 ticks, push to all neighbours, merge on a full
    buffer). Ormándi, Hegedűs, Jelasity, "Gossip learning with linear models on fully distributed data",
    Concurrency and Computation 2013 (gossip learning).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from clients.optimizers import make_chain, model_roles
from fedsim.data import FederatedData
from fedsim.errors import ConfigError
from fedsim.gossip.merge import DEFAULT_EPS, check_merge_args, merge_params


@dataclass(frozen=True)
class GossipConfig:
    """The protocol's settings (ticks are the simulator's abstract time unit, as in the authors' simulator)."""

    rule: str = "corrected"
    beta: float = 0.5
    eps: float = DEFAULT_EPS
    optimizer: str = "sgd"
    optimizer_args: Mapping[str, Any] = field(default_factory=lambda: {"lr": 0.1})
    batch_size: int = 32
    interval: tuple[int, int] = (8, 12)
    timeout: int = 100
    availability: float = 1.0
    eval_every: int = 50
    eval_chunk: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_merge_args(self.rule, self.beta, self.eps)
        lo, hi = self.interval
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ConfigError("gossip.interval", "two integers 1 <= lo <= hi", self.interval)
        for name in ("batch_size", "timeout", "eval_every", "eval_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"gossip.{name}", "an integer >= 1", value)
        if not 0.0 < self.availability <= 1.0:
            raise ConfigError("gossip.availability", "a probability in (0, 1]", self.availability)


def independent_init(build: Callable[[int], nn.Module], nodes: int, seed: int) -> dict[str, torch.Tensor]:
    """Stack ``nodes`` models built by ``build(seed_i)`` with distinct seeds: uncorrelated initial models, the
    setting in which averaging makes the variance vanish."""
    models = [build(seed * 1_000_003 + i) for i in range(nodes)]
    names = [n for n, _ in models[0].named_parameters()]
    return {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names}


class _Pool:
    """Sent models, one slot per (sender, send), reference-counted by the buffers that hold it."""

    def __init__(self, like: Mapping[str, torch.Tensor]) -> None:
        self.store = {n: torch.empty((16, *t.shape[1:]), dtype=t.dtype) for n, t in like.items()}
        self.refs = np.zeros(16, dtype=np.int64)
        self.free = list(range(15, -1, -1))

    def put(self, rows: Mapping[str, torch.Tensor], refs: np.ndarray) -> np.ndarray:
        k = len(refs)
        while len(self.free) < k:
            cap = len(self.refs)
            self.store = {n: torch.cat([t, torch.empty_like(t)]) for n, t in self.store.items()}
            self.refs = np.concatenate([self.refs, np.zeros(cap, dtype=np.int64)])
            self.free += list(range(2 * cap - 1, cap - 1, -1))
        slots = np.array([self.free.pop() for _ in range(k)], dtype=np.int64)
        idx = torch.from_numpy(slots)
        for n, t in rows.items():
            self.store[n][idx] = t
        self.refs[slots] = refs
        return slots

    def release(self, slots: Sequence[int]) -> None:
        for s in slots:
            self.refs[s] -= 1
            if self.refs[s] == 0:
                self.free.append(int(s))


class GossipSimulator:
    """N nodes, one model architecture, parameters stacked ``[N, ...]``; :meth:`run` advances the clock.

    Args:
        model: the architecture (its own weights are not used; ``functional_call`` runs it on node weights).
        data: the nodes' data: node i trains on ``data.partitions[i]``; evaluation uses ``data.test_x/test_y``.
        neighbours: node i's neighbour ids (``fedsim.gossip.topology.neighbour_lists``).
        params: the stacked initial models (e.g. :func:`independent_init`); copied, never modified.
        config: the protocol's settings.
    """

    def __init__(
        self,
        model: nn.Module,
        data: FederatedData,
        neighbours: Sequence[np.ndarray],
        params: Mapping[str, torch.Tensor],
        config: GossipConfig,
    ) -> None:
        n = len(neighbours)
        if len(data.partitions) < n:
            raise ConfigError(
                "gossip.nodes", f"at most the number of data partitions ({len(data.partitions)})", n
            )
        if any(t.shape[0] != n for t in params.values()):
            raise ValueError(
                f"params must be stacked over the {n} nodes. Got {[tuple(t.shape) for t in params.values()]}."
            )
        if any(True for _ in model.buffers()):
            raise ConfigError(
                "model", "a model without buffers (no BatchNorm) for the gossip simulator", "buffers"
            )
        self.model, self.data, self.cfg = model, data, config
        self.neighbours = [np.asarray(a, dtype=np.int64) for a in neighbours]
        self.degree = np.array([len(a) for a in self.neighbours], dtype=np.int64)
        self.params = {name: t.detach().clone() for name, t in params.items()}
        self.rng = np.random.default_rng(config.seed)
        lo, hi = config.interval
        self.tick = 0
        self.next_event = self.rng.integers(lo, hi + 1, size=n)
        self.online = np.ones(n, dtype=bool)
        self.last_merge = np.zeros(n, dtype=np.int64)
        self.buffers: list[list[int]] = [[] for _ in range(n)]
        self.pool = _Pool(self.params)
        self._next_eval = 0
        self.rows: list[dict[str, Any]] = []
        self.counts = {"trained": 0, "sent": 0, "merges": 0, "timeout_merges": 0}
        self._losses: list[float] = []
        self._tx = make_chain(
            config.optimizer, model_roles(model), batch_dims=1, **dict(config.optimizer_args)
        )
        self._grad = vmap(grad_and_value(self._loss))
        self._parts = [torch.from_numpy(np.array(data.partitions[i], dtype=np.int64)) for i in range(n)]

    @property
    def nodes(self) -> int:
        return len(self.neighbours)

    def _loss(self, p, x, y, mask):
        per_example = nn.functional.cross_entropy(functional_call(self.model, p, (x,)), y, reduction="none")
        return (per_example * mask).sum() / mask.sum()

    def _train(self, idx: np.ndarray) -> None:
        """One mini-batch of SGD for the nodes ``idx`` together (those without examples are skipped)."""
        idx = np.array([i for i in idx if len(self._parts[i])], dtype=np.int64)
        if not len(idx):
            return
        bsz = self.cfg.batch_size
        rows = torch.zeros(len(idx), bsz, dtype=torch.long)
        mask = torch.zeros(len(idx), bsz)
        for r, i in enumerate(idx):
            part = self._parts[i]
            pick = torch.from_numpy(self.rng.choice(len(part), size=min(bsz, len(part)), replace=False))
            rows[r] = part[0]
            rows[r, : len(pick)] = part[pick]
            mask[r, : len(pick)] = 1.0
        t_idx = torch.from_numpy(idx)
        p = {name: t[t_idx] for name, t in self.params.items()}
        grads, losses = self._grad(p, self.data.train_x[rows], self.data.train_y[rows], mask)
        updates, _ = self._tx.update(grads, self._tx.init(p), p)
        with torch.no_grad():
            for name, t in self.params.items():
                t[t_idx] = p[name] + updates[name].to(t.dtype)
        self._losses += losses.tolist()
        self.counts["trained"] += len(idx)

    def _push(self, senders: np.ndarray) -> None:
        """Each sender's current model goes into the buffer of each online neighbour (offline ones miss it)."""
        targets = [self.neighbours[i][self.online[self.neighbours[i]]] for i in senders]
        keep = np.array([len(t) > 0 for t in targets], dtype=bool)
        senders = senders[keep]
        targets = [t for t, k in zip(targets, keep, strict=True) if k]
        if not len(senders):
            return
        rows = {name: t[torch.from_numpy(senders)] for name, t in self.params.items()}
        slots = self.pool.put(rows, np.array([len(t) for t in targets], dtype=np.int64))
        for slot, dests in zip(slots, targets, strict=True):
            for j in dests:
                self.buffers[j].append(int(slot))
            self.counts["sent"] += len(dests)

    def _merge_due(self) -> None:
        """Merge every online node whose buffer is full, or non-empty and past its timeout; clear the buffers."""
        sizes = np.array([len(b) for b in self.buffers], dtype=np.int64)
        timed_out = (self.tick - self.last_merge >= self.cfg.timeout) & (sizes > 0)
        due = np.flatnonzero(self.online & ((sizes >= self.degree) | timed_out))
        if not len(due):
            return
        width = int(sizes[due].max())
        slots = torch.zeros(len(due), width, dtype=torch.long)
        mask = torch.zeros(len(due), width)
        for r, i in enumerate(due):
            buf = self.buffers[i]
            slots[r] = buf[0]
            slots[r, : len(buf)] = torch.tensor(buf)
            mask[r, : len(buf)] = 1.0
        t_idx = torch.from_numpy(due)
        own = {name: t[t_idx] for name, t in self.params.items()}
        received = {name: self.pool.store[name][slots] for name in self.params}
        cfg = self.cfg
        merged = merge_params(
            own, received, rule=cfg.rule, beta=cfg.beta, eps=cfg.eps, mask=mask, batch_dims=1
        )
        for name, t in self.params.items():
            t[t_idx] = merged[name]
        self.counts["merges"] += len(due)
        self.counts["timeout_merges"] += int((timed_out[due] & (sizes[due] < self.degree[due])).sum())
        for i in due:
            self.pool.release(self.buffers[i])
            self.buffers[i] = []
        self.last_merge[due] = self.tick

    def step(self) -> None:
        """Process the current tick: draw availability, train, push, merge."""
        lo, hi = self.cfg.interval
        due = np.flatnonzero(self.next_event == self.tick)
        if len(due):
            self.next_event[due] = self.tick + self.rng.integers(lo, hi + 1, size=len(due))
            if self.cfg.availability < 1.0:
                self.online[due] = self.rng.random(len(due)) < self.cfg.availability
            active = due[self.online[due]]
            self._train(active)
            self._push(active)
        self._merge_due()

    def _next_tick(self) -> int:
        """The next tick at which anything can happen: a training event or a pending timeout."""
        candidates = [int(self.next_event.min())]
        waiting = [i for i, b in enumerate(self.buffers) if b and self.online[i]]
        if waiting:
            candidates.append(max(self.tick + 1, int(self.last_merge[waiting].min()) + self.cfg.timeout))
        return min(candidates)

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the node models now (no global model: node accuracies and the average model's)."""
        x, y = self.data.test_x, self.data.test_y
        with torch.no_grad():
            fwd = vmap(lambda p: (functional_call(self.model, p, (x,)).argmax(-1) == y).double().mean())
            accs = []
            for start in range(0, self.nodes, self.cfg.eval_chunk):
                chunk = {n: t[start : start + self.cfg.eval_chunk] for n, t in self.params.items()}
                accs.append(fwd(chunk))
            acc = torch.cat(accs)
            mean = {n: t.double().mean(0) for n, t in self.params.items()}
            avg_acc = (
                functional_call(self.model, {n: m.float() for n, m in mean.items()}, (x,)).argmax(-1) == y
            )
            sq = sum((t.double() - mean[n]).flatten(1).square().sum(1) for n, t in self.params.items())
            row: dict[str, Any] = {
                "tick": self.tick,
                **self.counts,
                "train_loss": float(np.mean(self._losses)) if self._losses else None,
                "test_accuracy_mean": float(acc.mean()),
                "test_accuracy_std": float(acc.std(correction=0)),
                "test_accuracy_min": float(acc.min()),
                "test_accuracy_max": float(acc.max()),
                "test_accuracy_avg_model": float(avg_acc.double().mean()),
                "consensus_distance": float(sq.sqrt().mean()),
                "online": int(self.online.sum()),
            }
            for n, t in self.params.items():
                if t.dim() > 1:
                    row[f"layer_var/{n}"] = float(t.double().flatten(1).var(1, correction=0).mean())
        self._losses = []
        return row

    def advance(self, end: int) -> bool:
        """Process the next tick at which something happens, if it is at most ``end``; whether one was."""
        nxt = min(self._next_tick(), self._next_eval)
        if nxt > end:
            return False
        self.tick = nxt
        self.step()
        if self.tick == self._next_eval:
            self.rows.append(self.evaluate())
            self._next_eval += self.cfg.eval_every
        return True

    def run(self, ticks: int) -> list[dict[str, Any]]:
        """Advance the clock to ``self.tick + ticks``; return one metrics row per evaluation tick (from tick 0)."""
        end = self.tick + ticks
        first = len(self.rows)
        start = time.perf_counter()
        while self.advance(end):
            if len(self.rows) > first and "wall_time_s" not in self.rows[-1]:
                self.rows[-1]["wall_time_s"] = round(time.perf_counter() - start, 4)
        self.tick = end
        return self.rows[first:]
