"""Folding a worker's finished clients into its one reply, shared by every cohort trainer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedsim.engine.stacks import client_rows, subtract_from_rows, weighted_row_sum
from fedsim.gradcore import global_norm
from fedsim.gradcore.dp import normalize_layers
from fedsim.privacy.client_level import update_clipper
from fedsim.protocol import ClientClip, ClientTask, WorkerResult


def finite_rows(stacks, k: int, device: torch.device) -> torch.Tensor:
    """``[k]`` bool: whether row i of every ``[k, ...]`` tensor in ``stacks`` is entirely finite.

    The same as ``isfinite(t).flatten(1).all(1)`` AND-ed over the tensors, in two reads of each tensor and no
    ``[k, ...]`` temporary: a row's minimum and maximum are both finite exactly when all its values are (an
    infinity is the row's minimum or maximum; a NaN makes both NaN).
    """
    ok = torch.ones(k, dtype=torch.bool, device=device)
    for t in stacks:
        if t.numel() == 0:
            continue
        rows = client_rows(t)[0]  # amax and amin separately: ~20× faster on a CPU than aminmax or isfinite
        ok &= torch.isfinite(rows.amax(1)) & torch.isfinite(rows.amin(1))
    return ok


class CohortAccumulator:
    """Folds finished clients into a :class:`WorkerResult`: Σ n_i (θ_i − θ) in float64, non-finite left out.

    Clients come one at a time (``add``, the sequential path) or as a stack with a leading client dimension
    (``add_stacked``, the vectorised path: one weighted sum per tensor on the training device).

    With ``clip`` (client-level DP) each client's update is clipped before it is added, every client weighs 1,
    and its norm before clipping is kept for the privacy report. With ``tasks`` that carry a ``weight``/``group``
    (event-driven strategies), a client weighs its task's weight and is also summed into its group's sum. A task
    marked ``nonfinite`` (``faults.nonfinite``) has its new parameters replaced by NaN as they arrive, in both
    ``add`` and ``add_stacked``, so the same check drops it as a real NaN would be.
    """

    def __init__(
        self,
        global_params: Mapping[str, torch.Tensor],
        clip: ClientClip | None = None,
        tasks: Sequence[ClientTask] = (),
    ) -> None:
        self.theta = global_params
        self.float_keys = [k for k, v in global_params.items() if v.is_floating_point()]
        self.delta_sum = {k: torch.zeros_like(global_params[k], dtype=torch.float64) for k in self.float_keys}
        self.result = WorkerResult({}, 0.0, [], [], [], [])
        self.clip = clip
        self._clippers: dict[int, tuple] = {}
        self.weights = {t.cid: t.weight for t in tasks if t.weight is not None}
        self.groups = {t.cid: t.group for t in tasks if t.group is not None}
        self.nonfinite = frozenset(t.cid for t in tasks if t.nonfinite)

    def _weight(self, cid: int, default: float) -> float:
        return self.weights.get(cid, default)

    def _add_to_group(self, cid: int, scaled: Mapping[str, torch.Tensor]) -> None:
        if cid in self.groups:
            self._add_to_group_sum(self.groups[cid], scaled)

    def _add_to_group_sum(self, group: int, summed: Mapping[str, torch.Tensor]) -> None:
        sums = self.result.group_sums.setdefault(
            group, {k: torch.zeros_like(v) for k, v in self.delta_sum.items()}
        )
        for k, v in summed.items():
            sums[k] += v.double().cpu()

    def _clipped(self, deltas: dict[str, torch.Tensor], batch_dims: int) -> tuple[dict, torch.Tensor]:
        """The clipped updates and the norms the clip saw (per client when ``batch_dims`` is 1): the update's
        norm, or with ``normalize_layers`` the norm after each layer was normalised."""
        assert self.clip is not None
        c = self.clip
        if c.normalize_layers:
            deltas, _ = normalize_layers(batch_dims=batch_dims).update(deltas, None)
        norms = global_norm(deltas, batch_dims=batch_dims)
        if batch_dims not in self._clippers:
            clipper = update_clipper(c.max_norm, c.mode, layer_split=c.layer_split, batch_dims=batch_dims)
            self._clippers[batch_dims] = (clipper, clipper.init(deltas))  # stateless: the state never changes
        clipper, state = self._clippers[batch_dims]
        clipped, _ = clipper.update(deltas, state)
        return clipped, norms

    def add(
        self,
        cid: int,
        new_params: Mapping[str, torch.Tensor],
        num_examples: int,
        mean_loss: float,
        stats: Mapping[str, float] | None = None,
    ) -> None:
        """Add one client (``stats``: its diagnostics for ``WorkerResult.client_stats``)."""
        deltas = {k: new_params[k].detach().cpu().double() - self.theta[k].double() for k in self.float_keys}
        if cid in self.nonfinite:  # faults.nonfinite: the update comes back NaN
            deltas = {k: torch.full_like(d, float("nan")) for k, d in deltas.items()}
        if not all(torch.isfinite(d).all() for d in deltas.values()):
            self.result.failed.append(cid)
            return
        weight = self._weight(cid, num_examples)
        if self.clip is not None:
            deltas, norm = self._clipped(deltas, 0)
            self.result.update_norms.append(float(norm))
            weight = self._weight(cid, 1)
        for k, d in deltas.items():
            self.delta_sum[k] += weight * d
        self._add_to_group(cid, {k: weight * d for k, d in deltas.items()})
        self._keep(cid, num_examples, mean_loss, stats or {})

    def add_stacked(
        self,
        cids: Sequence[int],
        stacked: Mapping[str, torch.Tensor],
        num_examples: Sequence[int],
        mean_losses: Sequence[float],
        stats: Mapping[str, Sequence[float]] | None = None,
        in_place: bool = False,
    ) -> None:
        """Add K clients whose new parameters are stacked ``[K, ...]`` (on any device, in any dense layout);
        ``stats``: a list of K diagnostics per name. With ``in_place`` the stacks are the caller's to overwrite
        (the updates are computed in their memory)."""
        device = next(iter(stacked.values())).device
        deltas = {}
        for k in self.float_keys:
            theta = self.theta[k].to(device=device, dtype=stacked[k].dtype)
            deltas[k] = subtract_from_rows(stacked[k], theta) if in_place else stacked[k] - theta
        poisoned = [i for i, c in enumerate(cids) if c in self.nonfinite]
        if poisoned:  # faults.nonfinite: these clients' updates come back NaN
            rows = torch.tensor(poisoned, device=device)
            deltas = {k: d.index_fill(0, rows, float("nan")) for k, d in deltas.items()}
        ok = finite_rows(deltas.values(), len(cids), device)
        if not bool(ok.all()):  # zeros for the failed clients: their weight 0 would still carry a NaN (0·NaN)
            deltas = {
                k: torch.where(
                    ok.view(-1, *([1] * (d.dim() - 1))), d, torch.zeros((), dtype=d.dtype, device=device)
                )
                for k, d in deltas.items()
            }
        if self.clip is not None:
            deltas, norms = self._clipped(deltas, 1)
            base = [1.0] * len(cids)
        else:
            norms = None
            base = [float(n) for n in num_examples]
        chosen = [self._weight(c, b) for c, b in zip(cids, base, strict=True)]
        weights = torch.tensor(chosen, dtype=torch.float64, device=device) * ok
        for k, d in deltas.items():
            self.delta_sum[k] += weighted_row_sum(weights, d).double().cpu()
        grouped = [i for i, c in enumerate(cids) if c in self.groups]
        if grouped:  # one pass over the stack: each client's weighted update added to its group's row
            groups = sorted({self.groups[cids[i]] for i in grouped})
            row = {g: j for j, g in enumerate(groups)}
            index = torch.tensor([row[self.groups[cids[i]]] for i in grouped], device=device)
            members = torch.tensor(grouped, device=device)
            w = weights[members]
            for k, d in deltas.items():
                scaled = d[members] * w.to(d.dtype).view(-1, *([1] * (d.dim() - 1)))
                sums = torch.zeros((len(groups), *d.shape[1:]), dtype=d.dtype, device=device)
                sums.index_add_(0, index, scaled)
                for g, j in row.items():
                    self._add_to_group_sum(g, {k: sums[j]})
        norm_list = norms.tolist() if norms is not None else [None] * len(cids)
        stats = stats or {}
        for i, (cid, good, n, loss, norm) in enumerate(
            zip(cids, ok.tolist(), num_examples, mean_losses, norm_list, strict=True)
        ):
            if good:
                self._keep(cid, n, loss, {name: values[i] for name, values in stats.items()})
                if norm is not None:
                    self.result.update_norms.append(float(norm))
            else:
                self.result.failed.append(cid)

    def _keep(self, cid: int, num_examples: int, mean_loss: float, stats: Mapping[str, float]) -> None:
        self.result.weight_sum += num_examples
        self.result.client_ids.append(cid)
        self.result.num_examples.append(num_examples)
        self.result.train_loss.append(mean_loss)
        for name, value in stats.items():
            self.result.client_stats.setdefault(name, []).append(float(value))

    def finish(self, order: Sequence[int] | None = None) -> WorkerResult:
        """The reply; with ``order`` (client ids), the per-client lists follow it (e.g. the task order)."""
        r = self.result
        r.weighted_delta_sum = {k: v.to(self.theta[k].dtype) for k, v in self.delta_sum.items()}
        r.group_sums = {
            g: {k: v.to(self.theta[k].dtype) for k, v in sums.items()} for g, sums in r.group_sums.items()
        }
        if order is not None:
            rank = {cid: i for i, cid in enumerate(order)}
            by_rank = sorted(range(len(r.client_ids)), key=lambda i: rank[r.client_ids[i]])
            r.client_stats = {name: [v[i] for i in by_rank] for name, v in r.client_stats.items()}
            norms = r.update_norms or [None] * len(r.client_ids)
            kept = sorted(
                zip(r.client_ids, r.num_examples, r.train_loss, norms, strict=True), key=lambda t: rank[t[0]]
            )
            r.client_ids = [c for c, _, _, _ in kept]
            r.num_examples = [n for _, n, _, _ in kept]
            r.train_loss = [loss for _, _, loss, _ in kept]
            if r.update_norms:
                r.update_norms = [float(m) for _, _, _, m in kept]
            r.failed.sort(key=lambda c: rank[c])
        return r
