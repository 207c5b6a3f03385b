"""Sequential DP-SGD of one logical client through Opacus' ``PrivacyEngine`` (the reference path).

Why this module exists: the privacy spec asks for sample-level DP "through Opacus on the sequential path" and
through ``torch.func`` on the vectorised one, with the same math. Here Opacus does everything: the
``PrivacyEngine`` wraps the model (``GradSampleModule``) and the client's optimizer (``DPOptimizer``: clip each
example to C, sum, add N(0, σ²C²), divide by the expected batch size). The Poisson batches come from Opacus' own
``UniformWithReplacementSampler`` with the client's generator, at the rate and number of steps
``fedsim.privacy.sample_level.LocalSchedule`` fixes (what ``DPDataLoader`` would pick: q = 1/⌈n/B⌉), so the
vectorised trainer can draw the very same batches and noise.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import wrap_collate_with_empty
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate

from clients.dp_sgd import draw_noise_in_float64
from clients.optimizers import build, embedding_names
from fedsim.privacy.sample_level import LocalSchedule


@dataclass(frozen=True)
class LocalDPResult:
    """What a client's DP-SGD reports besides the new weights (which stay in the model).

    The diagnostics are simulation-only (not privatised): ``clipped_fraction`` of the example gradients,
    ``norm_p50`` the median example-gradient norm before clipping, ``signal_to_noise`` the mean over steps of
    ‖Σ clip(g_i)‖ / (σC·√d).
    """

    num_examples: int
    steps: int
    mean_loss: float
    clipped_fraction: float
    norm_p50: float
    signal_to_noise: float

    @property
    def stats(self) -> dict[str, float]:
        return {
            "clipped_fraction": self.clipped_fraction,
            "norm_p50": self.norm_p50,
            "signal_to_noise": self.signal_to_noise,
        }


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself on the CPU; on another device a generator there, seeded from it (Opacus draws its
    noise on the gradients' device)."""
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def signal_to_noise(signal_norm: float, noise_std: float, dim: int) -> float:
    """‖signal‖ / (σC·√d): the signal's norm over the expected norm of the noise added to it (inf without noise)."""
    return float("inf") if noise_std <= 0 else signal_norm / (noise_std * dim**0.5)


def train_local_dp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    optimizer: str,
    optimizer_args: Mapping[str, Any],
    max_norm: float,
    noise_multiplier: float,
    sample_generator: torch.Generator,
    noise_generator: torch.Generator,
) -> LocalDPResult:
    """Train ``model`` in place on (x, y) with DP-SGD for ``epochs`` epochs of Poisson batches.

    The loss is cross-entropy (mean over the batch, as Opacus expects). An empty Poisson batch still takes a
    step: the update is the noise alone, as the accounting assumes. ``mean_loss`` averages the non-empty batches,
    weighted by their size. The model comes back without Opacus' hooks or per-sample attributes.
    """
    n = int(x.shape[0])
    if n == 0:
        nan = float("nan")
        return LocalDPResult(0, 0, nan, nan, nan, nan)
    schedule = LocalSchedule(n, batch_size)
    sampler = UniformWithReplacementSampler(
        num_samples=n,
        sample_rate=schedule.sample_rate,
        generator=sample_generator,
        steps=schedule.steps_per_epoch,
    )
    collate = wrap_collate_with_empty(
        collate_fn=default_collate,
        sample_empty_shapes=[(0, *x.shape[1:]), (0,)],
        dtypes=[x.dtype, y.dtype],
    )
    loader = DataLoader(TensorDataset(x, y), batch_sampler=sampler, collate_fn=collate)
    opt = build(optimizer, model.named_parameters(), embeddings=embedding_names(model), **optimizer_args)
    device = next(model.parameters()).device
    with warnings.catch_warnings():  # we account ourselves; opacus warns about secure_mode and its accountant
        warnings.filterwarnings("ignore", category=UserWarning, module="opacus")
        private_model, dp_opt, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_norm,
            poisson_sampling=False,  # the loader already draws Poisson batches, with our generator
            noise_generator=device_generator(noise_generator, device),
        )
    draw_noise_in_float64(dp_opt)  # torch's float32 sampler cuts the Gaussian tail at 5.77σ
    assert dp_opt.expected_batch_size == schedule.expected_batch_size  # the divisor both paths use
    params = [p for group in dp_opt.param_groups for p in group["params"]]
    dim = sum(p.numel() for p in params)
    loss_fn = nn.CrossEntropyLoss()
    private_model.train()
    total, seen, steps, clipped, snr = 0.0, 0, 0, 0, 0.0
    norms: list[torch.Tensor] = []
    try:
        for _ in range(epochs):
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                dp_opt.zero_grad(set_to_none=True)
                loss = loss_fn(private_model(xb), yb)
                with warnings.catch_warnings():
                    warnings.filterwarnings(
                        "ignore", message="Full backward hook is firing", category=UserWarning
                    )
                    loss.backward()
                if len(xb):
                    per_tensor = [g.reshape(len(xb), -1).norm(2, dim=-1) for g in dp_opt.grad_samples]
                    step_norms = torch.stack(per_tensor, dim=-1).norm(2, dim=-1).detach().cpu()
                    norms.append(step_norms)
                    clipped += int((step_norms > max_norm).sum())
                    total += float(loss.detach()) * len(xb)
                    seen += len(xb)
                dp_opt.step()
                signal = float(sum(p.summed_grad.double().pow(2).sum() for p in params) ** 0.5)
                snr += signal_to_noise(signal, noise_multiplier * max_norm, dim)
                steps += 1
    finally:
        private_model._close()  # hooks and grad_sample attributes off the caller's model
        for p in model.parameters():
            p.grad = None
    all_norms = torch.cat(norms).numpy() if norms else np.zeros(0)
    return LocalDPResult(
        num_examples=n,
        steps=steps,
        mean_loss=total / seen if seen else float("nan"),
        clipped_fraction=clipped / seen if seen else float("nan"),
        norm_p50=float(np.median(all_norms)) if all_norms.size else float("nan"),
        signal_to_noise=snr / steps,
    )
