"""A shard of a gossip network: the nodes one process owns, their stacked models, buffers and clocks.

Why this module exists: node models must live where their nodes run (one process in the simulator, the worker
that owns them in the engine) and be trained together, vectorised. A tick is processed in two phases so that
models crossing between shards can be exchanged in between:

- **phase A** (:meth:`GossipShard.phase_a`): the nodes whose event falls on the tick draw their availability,
  train (one mini-batch or one epoch, vectorised over nodes), and send: *push* sends a node's model to
  all its neighbours; *pull* makes each due node fetch its neighbours' models (after their training at this
  tick); *push-pull* does both. Sends to nodes of this shard wait in ``pending``; the rest form the outbox.
- **phase B** (:meth:`GossipShard.phase_b`): every model sent at the tick (``pending`` and the other shards'
  inbox) is delivered in sender order to its online destinations' buffers; then each online node whose buffer
  holds as many models as it has neighbours, or holds any and has waited ``timeout`` ticks since its last merge,
  merges (plain or variance-corrected, ``fedsim.gossip.merge``) and clears its buffer.

Everything random is counter-based per node (``fedsim.gossip.schedule``, ``fedsim.gossip.randomness``), deliveries
are ordered by sender, and merges and training act per node, so any split of the nodes into shards gives the same
run (to float rounding of batched kernels). An offline node neither trains, sends, answers pulls, receives nor
merges; a buffer is a list of messages (a neighbour that sends twice fills two slots).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from clients.optimizers import make_chain, model_roles
from fedsim.data import FederatedData
from fedsim.errors import ConfigError
from fedsim.gossip.merge import DEFAULT_EPS, check_merge_args, merge_params
from fedsim.gossip.randomness import pick_without_replacement
from fedsim.gossip.schedule import Schedule

MODES = ("push", "pull", "push-pull")
UNITS = ("minibatch", "epoch")


@dataclass(frozen=True)
class ProtocolConfig:
    """How nodes train, talk and merge (the tick schedule is a :class:`~fedsim.gossip.schedule.Schedule`)."""

    rule: str = "corrected"
    beta: float = 0.5
    eps: float = DEFAULT_EPS
    mode: str = "push"
    unit: str = "minibatch"
    optimizer: str = "sgd"
    optimizer_args: Mapping[str, Any] = field(default_factory=lambda: {"lr": 0.1})
    batch_size: int = 32
    timeout: int = 100

    def __post_init__(self) -> None:
        check_merge_args(self.rule, self.beta, self.eps)
        if self.mode not in MODES:
            raise ConfigError("gossip.mode", f"one of {list(MODES)}", self.mode)
        if self.unit not in UNITS:
            raise ConfigError("gossip.unit", f"one of {list(UNITS)}", self.unit)
        for name in ("batch_size", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"gossip.{name}", "an integer >= 1", value)

    @property
    def pushes(self) -> bool:
        return self.mode in ("push", "push-pull")

    @property
    def pulls(self) -> bool:
        return self.mode in ("pull", "push-pull")


@dataclass
class Mail:
    """Models sent at one tick: row r of ``params`` is ``senders[r]``'s model, for the nodes ``dests[r]``."""

    senders: np.ndarray
    dests: list[np.ndarray]
    params: dict[str, torch.Tensor]

    @classmethod
    def empty(cls, like: Mapping[str, torch.Tensor]) -> Mail:
        return cls(
            np.zeros(0, dtype=np.int64),
            [],
            {n: torch.empty((0, *t.shape[1:]), dtype=t.dtype) for n, t in like.items()},
        )

    def __len__(self) -> int:
        return len(self.senders)

    def restrict(self, keep: np.ndarray) -> Mail:
        """The same mail with destinations limited to the nodes where ``keep[node]`` holds; rows left without any
        destination are dropped."""
        dests = [d[keep[d]] for d in self.dests]
        rows = np.array([len(d) > 0 for d in dests], dtype=bool)
        idx = torch.from_numpy(np.flatnonzero(rows))
        return Mail(
            self.senders[rows],
            [d for d, r in zip(dests, rows, strict=True) if r],
            {n: t[idx] for n, t in self.params.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Mail], like: Mapping[str, torch.Tensor]) -> Mail:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Mail.empty(like)
        return Mail(
            np.concatenate([p.senders for p in parts]),
            [d for p in parts for d in p.dests],
            {n: torch.cat([p.params[n] for p in parts]) for n in like},
        )


class _Pool:
    """Delivered models, one slot per (sender, send), reference-counted by the buffers that hold it."""

    def __init__(self, like: Mapping[str, torch.Tensor], capacity: int = 16) -> None:
        self.store = {n: torch.empty((capacity, *t.shape[1:]), dtype=t.dtype) for n, t in like.items()}
        self.refs = np.zeros(capacity, dtype=np.int64)
        self.free = list(range(capacity - 1, -1, -1))

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


class GossipShard:
    """The nodes ``owned`` (global ids, sorted) of an N-node network, with their models stacked ``[len(owned), ...]``.

    Args:
        model: the architecture (``functional_call`` runs it on each node's weights); no buffers (BatchNorm).
        data: every node's data: node i trains on ``data.partitions[i]``.
        neighbours: node i's neighbour ids (global), for all N nodes.
        owned: the nodes this shard runs.
        params: their initial models, stacked in ``owned`` order (copied).
        config: the protocol; ``schedule``: event times and availability; ``seed``: batch picks.
    """

    def __init__(
        self,
        model: nn.Module,
        data: FederatedData,
        neighbours: Sequence[np.ndarray],
        owned: np.ndarray,
        params: Mapping[str, torch.Tensor],
        config: ProtocolConfig,
        schedule: Schedule,
    ) -> None:
        if any(True for _ in model.buffers()):
            raise ConfigError(
                "model", "a model without buffers (no BatchNorm) for gossip learning", "buffers"
            )
        self.model, self.data, self.cfg, self.schedule = model, data, config, schedule
        self.neighbours = [np.asarray(a, dtype=np.int64) for a in neighbours]
        self.owned = np.asarray(owned, dtype=np.int64)
        if any(t.shape[0] != len(self.owned) for t in params.values()):
            raise ValueError(f"params must be stacked over the {len(self.owned)} owned nodes")
        self.local = np.full(len(self.neighbours), -1, dtype=np.int64)
        self.local[self.owned] = np.arange(len(self.owned))
        self.degree = np.array([len(self.neighbours[g]) for g in self.owned], dtype=np.int64)
        self.params = {name: t.detach().clone() for name, t in params.items()}
        n = len(self.owned)
        self.next_event = schedule.first_events(self.owned)
        self.events = np.zeros(n, dtype=np.int64)
        self.online = np.ones(n, dtype=bool)
        self.last_merge = np.zeros(n, dtype=np.int64)
        self.buffers: list[list[int]] = [[] for _ in range(n)]
        self.pool = _Pool(self.params)
        self.pending = Mail.empty(self.params)
        self.counts = {
            "trained": 0, "sent": 0, "merges": 0, "timeout_merges": 0, "failed": 0, "dropped_nonfinite": 0
        }  # fmt: skip
        self.losses: list[float] = []
        self._tx = make_chain(
            config.optimizer, model_roles(model), batch_dims=1, **dict(config.optimizer_args)
        )
        self._forward = vmap(lambda p, x: functional_call(model, p, (x,)))
        self._parts = [np.asarray(data.partitions[g], dtype=np.int64) for g in self.owned]

    # -- training -------------------------------------------------------------------------------------------
    def _grads(self, p, x, y, mask):
        """Each node's gradient of its mean loss on its batch, and the losses: the forward pass vmapped over nodes,
        the backward pass plain autograd of the sum of the nodes' losses (separable, so the gradient of node i's
        row is node i's gradient). Several times faster here than ``vmap(grad_and_value)``, whose cost grows with
        torch's intra-op threads on a busy 2-core machine."""
        q = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        logits = self._forward(q, x)
        per = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(
            mask.shape
        )
        losses = (per * mask).sum(1) / mask.sum(1)
        grads = torch.autograd.grad(losses.sum(), list(q.values()))
        return dict(zip(q, grads, strict=True)), losses.detach()

    def _sgd_step(self, idx: np.ndarray, batches: list[np.ndarray]) -> torch.Tensor:
        """One optimizer step for the local nodes ``idx`` together, node r on the example rows ``batches[r]``;
        returns their losses."""
        width = max(len(b) for b in batches)
        rows = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width)
        for r, b in enumerate(batches):
            rows[r] = int(b[0])
            rows[r, : len(b)] = torch.from_numpy(b)
            mask[r, : len(b)] = 1.0
        t_idx = torch.from_numpy(idx)
        p = {name: t[t_idx] for name, t in self.params.items()}
        grads, losses = self._grads(p, self.data.train_x[rows], self.data.train_y[rows], mask)
        updates, _ = self._tx.update(grads, self._tx.init(p), p)
        with torch.no_grad():
            for name, t in self.params.items():
                t[t_idx] = p[name] + updates[name].to(t.dtype)
        return losses

    def _train(self, idx: np.ndarray, events: np.ndarray) -> np.ndarray:
        """Train the local nodes ``idx`` at their event numbers ``events``: one mini-batch, or one epoch of
        mini-batches over a per-event permutation (nodes without examples are skipped).

        A node whose new model is not finite (really, or drawn by ``faults.nonfinite``: its new model is then
        made NaN) keeps its model from before the event, its losses are left out, and it is counted in
        ``dropped_nonfinite`` instead of ``trained``. Returns those nodes' local indices."""
        keep = np.array([len(self._parts[i]) > 0 for i in idx], dtype=bool)
        idx, events = idx[keep], events[keep]
        if not len(idx):
            return np.zeros(0, dtype=np.int64)
        t_idx = torch.from_numpy(idx)
        before = {name: t[t_idx] for name, t in self.params.items()}
        losses: list[tuple[np.ndarray, torch.Tensor]] = []  # (rows of idx, their losses) per step
        bsz, seed = self.cfg.batch_size, self.schedule.seed
        if self.cfg.unit == "minibatch":
            picks = [
                self._parts[i][
                    pick_without_replacement(seed, int(self.owned[i]), int(e), len(self._parts[i]), bsz)
                ]
                for i, e in zip(idx, events, strict=True)
            ]
            losses.append((np.arange(len(idx)), self._sgd_step(idx, picks)))
        else:
            orders = [
                self._parts[i][
                    pick_without_replacement(seed, int(self.owned[i]), int(e), len(self._parts[i]), 10**12)
                ]
                for i, e in zip(idx, events, strict=True)
            ]
            steps = np.array([-(-len(o) // bsz) for o in orders])
            for s in range(int(steps.max())):
                on = np.flatnonzero(steps > s)
                losses.append((on, self._sgd_step(idx[on], [orders[r][s * bsz : (s + 1) * bsz] for r in on])))
        return self._drop_nonfinite(idx, events, before, losses)

    @torch.no_grad()
    def _drop_nonfinite(
        self,
        idx: np.ndarray,
        events: np.ndarray,
        before: Mapping[str, torch.Tensor],
        losses: Sequence[tuple[np.ndarray, torch.Tensor]],
    ) -> np.ndarray:
        """After training ``idx``: inject ``faults.nonfinite``, give every node whose model is not finite its
        model from ``before`` back, keep the others' losses and count both; returns the dropped local indices."""
        t_idx = torch.from_numpy(idx)
        poisoned = torch.from_numpy(self.schedule.nonfinite_at(self.owned[idx], events))
        ok = torch.ones(len(idx), dtype=torch.bool)
        for t in self.params.values():
            if bool(poisoned.any()):
                t[t_idx[poisoned]] = float("nan")
            ok &= torch.isfinite(t[t_idx]).flatten(1).all(1)
        bad = np.flatnonzero(~ok.numpy())
        if len(bad):
            rows = torch.from_numpy(bad)
            for name, t in self.params.items():
                t[t_idx[rows]] = before[name][rows]
        good = ok.numpy()
        for rows, values in losses:
            self.losses += [v for r, v in zip(rows, values.tolist(), strict=True) if good[r]]
        self.counts["trained"] += int(good.sum())
        self.counts["dropped_nonfinite"] += len(bad)
        return idx[bad]

    # -- the two phases of a tick ---------------------------------------------------------------------------
    def pullers_due(self, tick: int) -> np.ndarray:
        """Global ids of this shard's nodes that pull at ``tick`` (known ahead: a node's next event is set at its
        previous one)."""
        if not self.cfg.pulls:
            return np.zeros(0, dtype=np.int64)
        return self.owned[self.next_event == tick]

    def phase_a(self, tick: int, serve: Mapping[int, Sequence[int]] | None = None) -> Mail:
        """Events at ``tick``: availability, training, sending. ``serve`` maps a node of this shard to the nodes
        of other shards that pull from it at this tick. Returns the mail for other shards."""
        due = np.flatnonzero(self.next_event == tick)
        sends: dict[int, list[np.ndarray]] = {}
        silent = np.zeros(len(self.owned), dtype=bool)  # not finite after training: they send nothing
        if len(due):
            nodes, events = self.owned[due], self.events[due]
            if self.schedule.varies_availability:
                self.online[due] = self.schedule.online(nodes, events, tick)
            failed = self.schedule.failed(nodes, events)
            self.next_event[due] = tick + self.schedule.gaps(nodes, events)
            self.events[due] += 1
            up = self.online[due]
            self.counts["failed"] += int((up & failed).sum())
            dropped = self._train(due[up & ~failed], events[up & ~failed])
            silent[dropped] = True
            if self.cfg.pushes:
                for g in nodes[up & ~silent[due]]:
                    sends.setdefault(int(g), []).append(self.neighbours[g])
            if self.cfg.pulls:  # due pullers (online or not: delivery drops what reaches an offline node)
                for g in nodes:
                    for j in self.neighbours[g]:
                        if self.local[j] >= 0:
                            sends.setdefault(int(j), []).append(np.array([g], dtype=np.int64))
        for j, requesters in (serve or {}).items():
            sends.setdefault(int(j), []).append(np.asarray(requesters, dtype=np.int64))
        # an offline node, or one whose training was not finite at this tick, sends nothing and answers no pull
        senders = np.array(
            sorted(j for j in sends if self.online[self.local[j]] and not silent[self.local[j]]),
            dtype=np.int64,
        )
        if not len(senders):
            return Mail.empty(self.params)
        rows = torch.from_numpy(self.local[senders])
        mail = Mail(
            senders,
            [np.concatenate(sends[int(j)]) for j in senders],
            {n: t[rows] for n, t in self.params.items()},
        )
        mine = self.local >= 0
        self.pending = Mail.concat([self.pending, mail.restrict(mine)], self.params)
        return mail.restrict(~mine)

    def phase_b(self, tick: int, inbox: Sequence[Mail] = ()) -> None:
        """Deliver the tick's mail (this shard's own and ``inbox``) in sender order, then merge who is due."""
        mail = Mail.concat([self.pending, *inbox], self.params)
        self.pending = Mail.empty(self.params)
        if len(mail):
            order = np.argsort(mail.senders, kind="stable")
            dests = [self.local[mail.dests[r]] for r in order]
            dests = [d[self.online[d]] for d in dests]
            refs = np.array([len(d) for d in dests], dtype=np.int64)
            keep = np.flatnonzero(refs > 0)
            if len(keep):
                idx = torch.from_numpy(order[keep])
                slots = self.pool.put({n: t[idx] for n, t in mail.params.items()}, refs[keep])
                for slot, k in zip(slots, keep, strict=True):
                    for d in dests[k]:
                        self.buffers[d].append(int(slot))
                self.counts["sent"] += int(refs.sum())
        self._merge_due(tick)

    def _merge_due(self, tick: int) -> None:
        sizes = np.array([len(b) for b in self.buffers], dtype=np.int64)
        timed_out = (tick - self.last_merge >= self.cfg.timeout) & (sizes > 0)
        due = np.flatnonzero(self.online & ((sizes >= self.degree) | timed_out) & (sizes > 0))
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
            t[t_idx] = merged[name].to(t.dtype)
        self.counts["merges"] += len(due)
        self.counts["timeout_merges"] += int((sizes[due] < self.degree[due]).sum())
        for i in due:
            self.pool.release(self.buffers[i])
            self.buffers[i] = []
        self.last_merge[due] = tick

    def next_tick(self, tick: int) -> int:
        """The earliest tick after ``tick`` at which this shard can act on its own: a node's event, or a timeout
        of a node waiting with a non-empty buffer (a lower bound: a node may merge before then)."""
        candidates = [int(self.next_event.min())] if len(self.owned) else []
        waiting = np.flatnonzero(self.online & np.array([len(b) > 0 for b in self.buffers], dtype=bool))
        if len(waiting):
            candidates.append(max(tick + 1, int(self.last_merge[waiting].min()) + self.cfg.timeout))
        return min(candidates) if candidates else 2**62

    def take_losses(self) -> list[float]:
        out, self.losses = self.losses, []
        return out

    # -- persistence (a worker keeps its shard in its Flower context between messages) ----------------------
    def state(self) -> dict[str, torch.Tensor]:
        """Everything that changes over a run, as tensors (the pool compacted to the slots in use, in the order the
        buffers first name them: the same state whatever slots the pool gave the models, kept live or loaded)."""
        used = list(dict.fromkeys(s for b in self.buffers for s in b))
        remap = {s: k for k, s in enumerate(used)}
        flat = [remap[s] for b in self.buffers for s in b]
        out: dict[str, torch.Tensor] = {f"p.{n}": t for n, t in self.params.items()}
        idx = torch.tensor(used, dtype=torch.long)
        out |= {f"pool.{n}": t[idx] for n, t in self.pool.store.items()}
        out |= {f"mail.{n}": t for n, t in self.pending.params.items()}
        out |= {
            "next_event": torch.from_numpy(self.next_event.copy()),
            "events": torch.from_numpy(self.events.copy()),
            "online": torch.from_numpy(self.online.astype(np.int64)),
            "last_merge": torch.from_numpy(self.last_merge.copy()),
            "buffer_sizes": torch.tensor([len(b) for b in self.buffers], dtype=torch.long),
            "buffer_slots": torch.tensor(flat, dtype=torch.long),
            "mail_senders": torch.from_numpy(self.pending.senders.copy()),
            "mail_sizes": torch.tensor([len(d) for d in self.pending.dests], dtype=torch.long),
            "mail_dests": torch.from_numpy(
                np.concatenate([*self.pending.dests, np.zeros(0, dtype=np.int64)])
            ),
            "counts": torch.tensor([self.counts[k] for k in sorted(self.counts)], dtype=torch.long),
        }
        return out

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` saved (the shard was built for the same nodes and scenario)."""
        self.params = {n: state[f"p.{n}"].clone() for n in self.params}
        self.next_event = state["next_event"].numpy().copy()
        self.events = state["events"].numpy().copy()
        self.online = state["online"].numpy().astype(bool)
        self.last_merge = state["last_merge"].numpy().copy()
        pool_rows = {n: state[f"pool.{n}"] for n in self.params}
        k = len(next(iter(pool_rows.values()))) if pool_rows else 0
        self.pool = _Pool(self.params, capacity=max(16, k))
        slots = self.pool.put(pool_rows, np.zeros(k, dtype=np.int64)) if k else np.zeros(0, dtype=np.int64)
        sizes, flat = state["buffer_sizes"].tolist(), state["buffer_slots"].tolist()
        self.buffers, pos = [], 0
        for s in sizes:
            self.buffers.append([int(slots[x]) for x in flat[pos : pos + s]])
            pos += s
        for b in self.buffers:
            for s in b:
                self.pool.refs[s] += 1
        mail_sizes = state["mail_sizes"].tolist()
        cuts = np.cumsum([0, *mail_sizes])
        dests = state["mail_dests"].numpy()
        self.pending = Mail(
            state["mail_senders"].numpy().copy(),
            [dests[a:b].copy() for a, b in zip(cuts[:-1], cuts[1:], strict=True)],
            {n: state[f"mail.{n}"].clone() for n in self.params},
        )
        self.counts = dict(zip(sorted(self.counts), state["counts"].tolist(), strict=True))
        self.losses = []
