"""Helpers of the data tests (a module with a unique name: test folders have no ``__init__.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim.data import FederatedData, load_federated_data


def load(**overrides: Any) -> FederatedData:
    """``load_federated_data`` with the quickstart defaults (digits, iid, 10 clients, seed 0) overridden."""
    kwargs: dict[str, Any] = {
        "dataset": "digits",
        "args": {},
        "partitioner": "iid",
        "partitioner_args": {},
        "test_fraction": 0.2,
        "num_clients": 10,
        "seed": 0,
    }
    kwargs.update(overrides)
    return load_federated_data(**kwargs)


def label_counts(data: FederatedData) -> list[list[int]]:
    """Per client, the number of examples of each class."""
    out = []
    for cid in range(len(data.partitions)):
        y = data.client_data(cid)[1].numpy()
        out.append([int((y == c).sum()) for c in range(data.num_classes)])
    return out


def mean_max_share(data: FederatedData) -> float:
    """Mean over clients of the share of the client's most frequent class (1/num_classes = perfectly mixed)."""
    counts = label_counts(data)
    return sum(max(c) / sum(c) for c in counts) / len(counts)


def write_image_parquets(folder: Path) -> tuple[Path, Path]:
    """Gray 6x5 images with ClassLabel labels written as parquet into ``folder``: a train file (60 rows) and a test
    file (20 rows); the paths."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    paths = []
    for name, n in (("train", 60), ("test", 20)):
        pixels = rng.integers(0, 256, size=(n, 6, 5), dtype=np.uint8)
        ds = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(p) for p in pixels], "label": [i % 4 for i in range(n)]},
            features=features,
        )
        ds.to_parquet(str(folder / f"{name}.parquet"))
        paths.append(folder / f"{name}.parquet")
    return paths[0], paths[1]
