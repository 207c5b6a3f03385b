"""A real ``torch.optim.Optimizer`` over a gradient-core chain, for plain PyTorch training loops.

``step()`` gathers the parameters' gradients into an ordered map, runs the chain's ``update`` and adds the result
to the parameters in place. ``state_dict()`` / ``load_state_dict()`` carry the chain's state (a tree of tensors),
so a checkpoint resumes the same trajectory. Changing ``param_groups[0]["lr"]`` (e.g. with an LR scheduler)
scales every update by the new rate over the one the chain was built with.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from fedsim.gradcore import GradientTransformation
from fedsim.gradcore.partition import param_roles


def _named(params: Iterable[Any]) -> dict[str, torch.nn.Parameter]:
    """Accept ``model.named_parameters()``, a name -> parameter mapping, or plain parameters (named by index)."""
    if isinstance(params, Mapping):
        return dict(params)
    items = list(params)
    if items and isinstance(items[0], tuple):
        return dict(items)
    return {str(i): p for i, p in enumerate(items)}


def _to(tree: Any, like: torch.Tensor | None) -> Any:
    """Copy a state tree, moving tensors to ``like``'s device."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone().to(like.device if like is not None else tree.device)
    if isinstance(tree, dict):
        return {k: _to(v, like) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_to(v, like) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to(v, like) for v in tree)
    return copy.deepcopy(tree)


class ChainOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` whose step is a gradient-core chain.

    Args:
        params: ``model.named_parameters()`` (names give the chain its layer structure), a mapping, or plain
            parameters.
        make_chain: builds the chain from the parameters' roles (``param_roles``).
        lr: the learning rate the chain was built with (for ``param_groups[0]["lr"]``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        make_chain: Callable[[Mapping[str, str]], GradientTransformation],
        *,
        lr: float,
        embeddings: Iterable[str] = (),
    ) -> None:
        named = _named(params)
        if not named:
            raise ValueError("ChainOptimizer got an empty parameter list")
        super().__init__(list(named.values()), {"lr": lr})
        self.names = list(named)
        self.base_lr = lr
        self.chain = make_chain(param_roles(named, embeddings=embeddings))
        with torch.no_grad():
            self.chain_state = self.chain.init({n: p.detach() for n, p in named.items()})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = dict(zip(self.names, self.param_groups[0]["params"], strict=True))
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
        updates, self.chain_state = self.chain.update(
            grads, self.chain_state, {n: p.detach() for n, p in params.items()}
        )
        factor = self.param_groups[0]["lr"] / self.base_lr
        for n, p in params.items():
            u = updates[n].to(p.dtype)
            p.add_(u if factor == 1.0 else u * factor)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {
            "chain_state": _to(self.chain_state, None),
            "names": list(self.names),
            "lr": self.param_groups[0]["lr"],
            "base_lr": self.base_lr,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if list(state_dict["names"]) != self.names:
            raise ValueError("load_state_dict: the saved state is for other parameters")
        like = self.param_groups[0]["params"][0]
        self.chain_state = _to(state_dict["chain_state"], like)
        self.param_groups[0]["lr"] = state_dict["lr"]
        self.base_lr = state_dict["base_lr"]
