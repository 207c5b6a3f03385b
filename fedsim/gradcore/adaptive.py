"""Adaptive (second-moment) preconditioners: Adam and Yogi moments.

Why this module exists: Adam-family moments drive client Adam/AdamW, the FedAdam / FedYogi server optimizers and
LAMB; keeping only the preconditioning here (the learning rate and weight decay are separate transforms) lets each
of those be a short chain. Element-wise; the step counter broadcasts from the left (``[]`` or ``[K]``), so a leading
client dimension passes through unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fedsim.gradcore.base import (
    GradientTransformation,
    OptState,
    Params,
    Updates,
    expand_left,
    init_count,
    tree_map,
    zeros_like,
)


class ScaleByAdamState(NamedTuple):
    """Step count and first/second moment estimates."""

    count: torch.Tensor
    mu: dict[str, torch.Tensor]
    nu: dict[str, torch.Tensor]


class ScaleByYogiState(NamedTuple):
    """Step count and first/second moment estimates."""

    count: torch.Tensor
    mu: dict[str, torch.Tensor]
    nu: dict[str, torch.Tensor]


def _bias_correction(decay: float, count: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``1 - decay**count`` in float64 (or 1 when disabled), to be broadcast with ``expand_left``."""
    if not enabled:
        return torch.ones((), dtype=torch.float64, device=count.device)
    return 1.0 - decay ** count.to(torch.float64)


def _precondition(
    mu: Updates,
    nu: Updates,
    count: torch.Tensor,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    bc: bool,
    eps_mode: str = "torch",
) -> dict[str, torch.Tensor]:
    """``m_hat / (sqrt(v_hat + eps_root) + eps)`` ("torch"), or ``sqrt(1-b2^t)/(1-b1^t) · m / (sqrt(v) + eps)``
    ("hat": eps added to the uncorrected root), with optional bias correction."""
    c1, c2 = _bias_correction(b1, count, bc), _bias_correction(b2, count, bc)

    def one(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if eps_mode == "hat":
            step = torch.sqrt(expand_left(c2, m)) / expand_left(c1, m)
            return step * m / (torch.sqrt(v + eps_root) + eps)
        m_hat = m / expand_left(c1, m)
        v_hat = v / expand_left(c2, v)
        return m_hat / (torch.sqrt(v_hat + eps_root) + eps)

    return tree_map(one, mu, nu)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_root: float = 0.0,
    bias_correction: bool = True,
    eps_mode: str = "torch",
) -> GradientTransformation:
    """Adam's preconditioner: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, out ``m_hat/(sqrt(v_hat)+eps)``.

    With ``bias_correction=True``, ``m_hat = m/(1-b1^t)`` and ``v_hat = v/(1-b2^t)`` (t from 1), as in
    ``torch.optim.Adam``; with ``False`` the raw moments are used, which is FedAdam (then ``eps`` is the paper's
    ``tau``). ``eps_root`` is added inside the square root. ``eps_mode="hat"`` places ``eps`` as the Adam paper's
    Algorithm 1 footnote does (and SPAM): the step is ``sqrt(1-b2^t)/(1-b1^t) · m/(sqrt(v)+eps)``.

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, arXiv 1412.6980;
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295.
    """

    if eps_mode not in ("torch", "hat"):
        raise ValueError(f"eps_mode must be 'torch' or 'hat'. Got {eps_mode!r}.")

    def init(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(count=init_count(params), mu=zeros_like(params), nu=zeros_like(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], ScaleByAdamState]:
        del params
        mu = tree_map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
        nu = tree_map(lambda g, v: b2 * v + (1.0 - b2) * (g * g), updates, state.nu)
        count = state.count + 1
        out = _precondition(mu, nu, count, b1, b2, eps, eps_root, bias_correction, eps_mode)
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


def scale_by_yogi(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    *,
    initial_v: float = 0.0,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Yogi's preconditioner: Adam's, with the additive second moment ``v = v - (1-b2) g^2 sign(v - g^2)``.

    ``v`` starts at ``initial_v`` (0 as in Flower's FedYogi; the Yogi paper suggests 1e-6) and stays non-negative.
    Without bias correction (the default, as in FedYogi) the output is ``m/(sqrt(v)+eps)``.

    References:
        Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018;
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295.
    """

    def init(params: Params) -> ScaleByYogiState:
        nu = tree_map(lambda p: torch.full_like(p, initial_v, requires_grad=False), params)
        return ScaleByYogiState(count=init_count(params), mu=zeros_like(params), nu=nu)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[dict[str, torch.Tensor], ScaleByYogiState]:
        del params
        mu = tree_map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
        nu = tree_map(lambda g, v: v - (1.0 - b2) * (g * g) * torch.sign(v - g * g), updates, state.nu)
        count = state.count + 1
        out = _precondition(mu, nu, count, b1, b2, eps, 0.0, bias_correction)
        return out, ScaleByYogiState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)
