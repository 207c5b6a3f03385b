"""Models by name: the single place a scenario's ``model.name`` is resolved.

The registry and the models' declarations (names, ``MODEL_ARGS``) import without torch; each factory imports it when
it builds, so that validating a scenario does not pay torch's seconds of start-up (``tests/privacy/test_light_imports.py``).
"""

from fedsim.models.registry import MODELS, build_model, model_names

# Importing the modules registers their models.
from fedsim.models import cnn, mlp, simple_cnn  # noqa: E402,F401  isort: skip

__all__ = ["MODELS", "build_model", "model_names"]
