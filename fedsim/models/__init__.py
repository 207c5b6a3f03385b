"""Models by name: the single place a scenario's ``model.name`` is resolved."""

from fedsim.models.registry import MODELS, build_model, model_names

# Importing the modules registers their models.
from fedsim.models import cnn, mlp, simple_cnn  # noqa: E402,F401  isort: skip

__all__ = ["MODELS", "build_model", "model_names"]
