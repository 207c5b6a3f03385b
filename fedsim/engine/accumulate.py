"""Folding a worker's finished clients into its one reply, shared by every cohort trainer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedsim.engine.protocol import WorkerResult


class CohortAccumulator:
    """Folds finished clients into a :class:`WorkerResult`: Σ n_i (θ_i − θ) in float64, non-finite left out.

    Clients come one at a time (``add``, the sequential path) or as a stack with a leading client dimension
    (``add_stacked``, the vectorised path: one weighted sum per tensor on the training device).
    """

    def __init__(self, global_params: Mapping[str, torch.Tensor]) -> None:
        self.theta = global_params
        self.float_keys = [k for k, v in global_params.items() if v.is_floating_point()]
        self.delta_sum = {k: torch.zeros_like(global_params[k], dtype=torch.float64) for k in self.float_keys}
        self.result = WorkerResult({}, 0.0, [], [], [], [])

    def add(
        self, cid: int, new_params: Mapping[str, torch.Tensor], num_examples: int, mean_loss: float
    ) -> None:
        deltas = {k: new_params[k].detach().cpu().double() - self.theta[k].double() for k in self.float_keys}
        if not all(torch.isfinite(d).all() for d in deltas.values()):
            self.result.failed.append(cid)
            return
        for k, d in deltas.items():
            self.delta_sum[k] += num_examples * d
        self._keep(cid, num_examples, mean_loss)

    def add_stacked(
        self,
        cids: Sequence[int],
        stacked: Mapping[str, torch.Tensor],
        num_examples: Sequence[int],
        mean_losses: Sequence[float],
    ) -> None:
        """Add K clients whose new parameters are stacked ``[K, ...]`` (on any device)."""
        device = next(iter(stacked.values())).device
        deltas = {
            k: stacked[k] - self.theta[k].to(device=device, dtype=stacked[k].dtype) for k in self.float_keys
        }
        ok = torch.ones(len(cids), dtype=torch.bool, device=device)
        for d in deltas.values():
            ok &= torch.isfinite(d).flatten(1).all(1)
        weights = torch.tensor(num_examples, dtype=torch.float64, device=device) * ok
        for k, d in deltas.items():
            finite = torch.where(
                ok.view(-1, *([1] * (d.dim() - 1))), d, torch.zeros((), dtype=d.dtype, device=device)
            )
            self.delta_sum[k] += torch.tensordot(weights.to(d.dtype), finite, dims=1).double().cpu()
        for cid, good, n, loss in zip(cids, ok.tolist(), num_examples, mean_losses, strict=True):
            if good:
                self._keep(cid, n, loss)
            else:
                self.result.failed.append(cid)

    def _keep(self, cid: int, num_examples: int, mean_loss: float) -> None:
        self.result.weight_sum += num_examples
        self.result.client_ids.append(cid)
        self.result.num_examples.append(num_examples)
        self.result.train_loss.append(mean_loss)

    def finish(self, order: Sequence[int] | None = None) -> WorkerResult:
        """The reply; with ``order`` (client ids), the per-client lists follow it (e.g. the task order)."""
        r = self.result
        r.weighted_delta_sum = {k: v.to(self.theta[k].dtype) for k, v in self.delta_sum.items()}
        if order is not None:
            rank = {cid: i for i, cid in enumerate(order)}
            kept = sorted(
                zip(r.client_ids, r.num_examples, r.train_loss, strict=True), key=lambda t: rank[t[0]]
            )
            r.client_ids = [c for c, _, _ in kept]
            r.num_examples = [n for _, n, _ in kept]
            r.train_loss = [loss for _, _, loss in kept]
            r.failed.sort(key=lambda c: rank[c])
        return r
