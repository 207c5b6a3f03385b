"""Folding a worker's finished clients into its one reply, shared by every cohort trainer."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedsim.engine.protocol import WorkerResult


class CohortAccumulator:
    """Folds finished clients into a :class:`WorkerResult`: Σ n_i (θ_i − θ) in float64, non-finite left out."""

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
        self.result.weight_sum += num_examples
        self.result.client_ids.append(cid)
        self.result.num_examples.append(num_examples)
        self.result.train_loss.append(mean_loss)

    def finish(self) -> WorkerResult:
        self.result.weighted_delta_sum = {k: v.to(self.theta[k].dtype) for k, v in self.delta_sum.items()}
        return self.result
