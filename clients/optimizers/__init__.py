"""Client optimizers by name: ``build(name, params, **kwargs) -> torch.optim.Optimizer``.

Every optimizer is a named gradient-core chain (``clients.optimizers.registry``); ``build`` wraps it in a real
``torch.optim.Optimizer`` (``ChainOptimizer``) for plain PyTorch loops, and ``make_chain`` gives the chain itself
to the vectorised cohort trainer, which steps a whole stack of clients in one call. The scenario's
``client.optimizer`` resolves through the same registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any

import torch

from clients.optimizers.adapter import ChainOptimizer
from clients.optimizers.registry import CHAINS, accepted_args, check_optimizer_spec, make_chain

# Importing every module of the package registers its optimizers.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def names() -> list[str]:
    """Every registered client optimizer name."""
    return CHAINS.names()


def build(
    name: str, params: Iterable[Any], *, embeddings: Iterable[str] = (), **kwargs: Any
) -> torch.optim.Optimizer:
    """Optimizer ``name`` over ``params`` (``model.named_parameters()`` preferred: names give layer roles;
    ``embeddings`` names the embedding tables, see ``embedding_names``)."""
    check_optimizer_spec(name, kwargs)
    lr = float(kwargs.get("lr", _default_lr(name)))
    return ChainOptimizer(
        params, lambda roles: make_chain(name, roles, **kwargs), lr=lr, embeddings=embeddings
    )


def embedding_names(model: torch.nn.Module) -> list[str]:
    """Names of the model's embedding tables (``nn.Embedding`` / ``nn.EmbeddingBag`` weights)."""
    kinds = (torch.nn.Embedding, torch.nn.EmbeddingBag)
    return [f"{m}.weight" if m else "weight" for m, mod in model.named_modules() if isinstance(mod, kinds)]


def model_roles(model: torch.nn.Module) -> dict[str, str]:
    """Every parameter's role in ``model`` (``fedsim.gradcore.param_roles`` with its embeddings named)."""
    from fedsim.gradcore.partition import param_roles

    return param_roles(dict(model.named_parameters()), embeddings=embedding_names(model))


def _default_lr(name: str) -> float:
    import inspect

    default = inspect.signature(CHAINS.get(name)).parameters.get("lr")
    return float(default.default) if default is not None and default.default is not inspect._empty else 1.0


__all__ = [
    "CHAINS",
    "ChainOptimizer",
    "accepted_args",
    "build",
    "check_optimizer_spec",
    "make_chain",
    "names",
]
