"""Data tests run offline: no Hugging Face Hub access and no flwr-datasets telemetry."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """flwr-datasets posts a telemetry event on ``load_split``; these tests must not touch the network."""
    import datasets.config
    import flwr_datasets.common.telemetry as telemetry
    import huggingface_hub.constants

    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read the variables at import time, which may have happened before this fixture ran.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
