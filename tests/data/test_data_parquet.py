"""``parquet:<path>`` through flwr-datasets' FederatedDataset, offline, on files written here."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from data_helpers import load, write_image_parquets

from fedsim.errors import ConfigError


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> Path:
    """300 rows: two numeric features, a string label (3 classes) and a user id (6 users)."""
    rng = np.random.default_rng(0)
    n = 300
    path = tmp_path_factory.mktemp("tab") / "rows.parquet"
    datasets.Dataset.from_dict(
        {
            "f1": rng.normal(size=n),
            "f2": np.arange(n, dtype=np.int64),
            "label": np.array(["cat", "dog", "eel"])[np.arange(n) % 3],
            "user": np.arange(n) % 6,
        }
    ).to_parquet(str(path))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    """Gray 6x5 images with ClassLabel labels: a train file (60 rows) and a test file (20 rows)."""
    return write_image_parquets(tmp_path_factory.mktemp("img"))


def _load(path: Path, tmp_path: Path, **overrides):
    args = {"cache_dir": str(tmp_path / "hf-cache"), **overrides.pop("args", {})}
    return load(dataset=f"parquet:{path}", args=args, **overrides)


def test_tabular_parquet_iid_with_heldout_fraction(tabular, tmp_path):
    data = _load(tabular, tmp_path, num_clients=5, test_fraction=0.2)
    assert data.input_shape == (3,)  # default x: every column but the label (no user column was named)
    assert data.num_classes == 3
    assert len(data.train_y) == 240 and len(data.test_y) == 60  # stratified 20% of 300
    every = np.concatenate(data.partitions)
    assert sorted(every.tolist()) == list(range(240))
    # the features travel with their rows: f2 (= original row number) decides the label (row % 3)
    row = data.train_x[:, 1].numpy().astype(int)
    assert np.array_equal(row % 3, data.train_y.numpy())


def test_tabular_parquet_natural_partition_by_user_column(tabular, tmp_path):
    data = _load(
        tabular, tmp_path, args={"user": "user", "x": ["f1", "f2"]}, partitioner="natural", num_clients=6
    )
    users = [set((data.client_data(c)[0][:, 1].numpy().astype(int) % 6).tolist()) for c in range(6)]
    assert all(len(u) == 1 for u in users) and set.union(*users) == set(range(6))


def test_parquet_is_deterministic_and_seed_sensitive(tabular, tmp_path):
    a = _load(tabular, tmp_path, partitioner="dirichlet", partitioner_args={"alpha": 1.0}, num_clients=4)
    b = _load(tabular, tmp_path, partitioner="dirichlet", partitioner_args={"alpha": 1.0}, num_clients=4)
    c = _load(
        tabular, tmp_path, partitioner="dirichlet", partitioner_args={"alpha": 1.0}, num_clients=4, seed=5
    )
    assert torch.equal(a.train_x, b.train_x) and all(
        np.array_equal(p, q) for p, q in zip(a.partitions, b.partitions, strict=True)
    )
    assert not torch.equal(a.train_x, c.train_x)


def test_image_parquet_with_test_file(images, tmp_path):
    train, test = images
    data = _load(train, tmp_path, args={"test_path": str(test)}, num_clients=3)
    assert data.input_shape == (1, 6, 5) and data.num_classes == 4
    assert data.train_x.shape == (60, 1, 6, 5) and data.test_x.shape == (20, 1, 6, 5)
    assert (
        data.train_x.dtype == torch.float32
        and 0.0 <= float(data.train_x.min()) <= float(data.train_x.max()) <= 1
    )
    # pixel values survive as k/255
    assert torch.allclose(data.train_x * 255, (data.train_x * 255).round(), atol=1e-4)


def test_parquet_errors_name_the_field(tabular, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.dataset must be the path of an existing parquet file"):
        _load(tmp_path / "missing.parquet", tmp_path)
    with pytest.raises(ConfigError, match=r"data\.args\.y must be a column of .*f1, f2, label, user"):
        _load(tabular, tmp_path, args={"y": "target"})
    with pytest.raises(ConfigError, match=r"data\.args\.x must be columns of the dataset"):
        _load(tabular, tmp_path, args={"x": ["f1", "nope"]})
    with pytest.raises(ConfigError, match=r"data\.partitioner must be a partitioner other than natural"):
        _load(tabular, tmp_path, partitioner="natural")
    with pytest.raises(
        ConfigError, match=r"population\.clients must be the number of distinct user ids .*\(6\)"
    ):
        _load(tabular, tmp_path, args={"user": "user"}, partitioner="natural", num_clients=4)
    with pytest.raises(ConfigError, match=r"data\.args\.subset must be an accepted key of parquet"):
        _load(tabular, tmp_path, args={"subset": "x"})


def test_hub_dataset_offline_is_a_config_error(tmp_path):
    """hf:<name> needs the network; offline, the failure names data.dataset instead of a datasets traceback."""
    with pytest.raises(ConfigError, match=r"data\.dataset must be a dataset that can be loaded"):
        load(dataset="hf:ylecun/mnist", args={"cache_dir": str(tmp_path / "hf-cache")})
