"""User errors surface as ConfigError naming the dotted scenario field, never as asserts or library errors."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from data_helpers import load
from flwr_datasets.partitioner import Partitioner

from fedsim.data.partitioners import INDEX, LABEL, PartitionContext, read_partitions
from fedsim.errors import ConfigError, UnknownNameError


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        load(dataset="cifar")
    message = str(info.value)
    assert message.startswith("data.dataset must be one of ")
    for name in ("digits", "mnist1d", "synthetic", "hf:<name>", "parquet:<path>"):
        assert name in message
    assert "Got 'cifar'" in message


def test_unknown_prefix_and_empty_target():
    with pytest.raises(UnknownNameError, match=r"data\.dataset must be one of"):
        load(dataset="s3:bucket/file")
    with pytest.raises(ConfigError, match=r"data\.dataset must be hf:<name>"):
        load(dataset="hf:")


def test_unknown_partitioner_lists_known_names():
    with pytest.raises(
        UnknownNameError, match=r"data\.partitioner must be one of dirichlet, iid, natural, pathological"
    ):
        load(partitioner="quantity")


@pytest.mark.parametrize("alpha", [0, -1, "big", True, float("nan")])
def test_dirichlet_alpha_must_be_positive(alpha):
    with pytest.raises(ConfigError, match=r"data\.partitioner_args\.alpha must be a number > 0"):
        load(partitioner="dirichlet", partitioner_args={"alpha": alpha})


def test_unknown_partitioner_arg_names_the_key_and_accepted_keys():
    with pytest.raises(ConfigError) as info:
        load(partitioner="dirichlet", partitioner_args={"alpah": 0.5})
    message = str(info.value)
    assert message.startswith("data.partitioner_args.alpah must be an accepted key of dirichlet")
    assert "alpha, min_partition_size, self_balancing, shuffle" in message
    with pytest.raises(
        ConfigError, match=r"data\.partitioner_args\.alpha must be an accepted key of iid \(accepted: none\)"
    ):
        load(partitioner="iid", partitioner_args={"alpha": 1.0})


def test_unknown_dataset_arg():
    with pytest.raises(ConfigError, match=r"data\.args\.betta must be an accepted key of synthetic"):
        load(dataset="synthetic", args={"betta": 1.0})
    with pytest.raises(ConfigError, match=r"data\.args\.samples\.dist must be one of lognormal, constant"):
        load(dataset="synthetic", args={"samples": {"dist": "zipf"}})


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"test_fraction": 1.0}, "data.test_fraction"),
        ({"test_fraction": -0.1}, "data.test_fraction"),
        ({"num_clients": 0}, "population.clients"),
        ({"seed": -1}, "seed"),
        ({"partitioner_args": [1, 2]}, "data.partitioner_args"),
        ({"dataset": "mnist1d", "args": {"padding": [60, 36]}}, "data.args.padding"),
        (
            {"partitioner": "pathological", "partitioner_args": {"num_classes_per_partition": 11}},
            "data.partitioner_args",
        ),
        (
            {"partitioner": "shard", "partitioner_args": {"shard_size": 100}, "num_clients": 20},
            "data.partitioner_args",
        ),
    ],
)
def test_invalid_values_name_their_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        load(**overrides)
    assert str(info.value).startswith(field + " must be ")


def test_natural_needs_user_ids():
    with pytest.raises(
        ConfigError, match=r"data\.partitioner must be a partitioner other than natural for dataset digits"
    ):
        load(partitioner="natural")


def test_more_clients_than_dirichlet_can_fill_is_a_config_error():
    """digits has ~1440 training rows: 1000 clients at alpha 0.05 cannot all get an example."""
    with pytest.raises(ConfigError, match=r"data\.partitioner_args must be settings .*dirichlet"):
        load(partitioner="dirichlet", partitioner_args={"alpha": 0.05}, num_clients=1000)


def test_every_client_needs_an_example():
    """More clients than training rows would leave clients empty: refused rather than handing out empty ones."""
    with pytest.raises(
        ConfigError, match=r"population\.clients must be at most the number of training examples"
    ):
        load(dataset="mnist1d", args={"num_samples": 20}, num_clients=25)  # 20 training rows


def test_impossible_shard_settings():
    """20 clients x 1 shard x 3 rows needs 60 rows; mnist1d has 20 here. flwr's ValueError becomes a ConfigError."""
    with pytest.raises(
        ConfigError, match=r"data\.partitioner_args must be settings shard can satisfy with 20 clients"
    ):
        load(
            dataset="mnist1d",
            args={"num_samples": 20},
            num_clients=20,
            partitioner="shard",
            partitioner_args={"num_shards_per_partition": 1, "shard_size": 3},
        )


class _LeavesOneEmpty(Partitioner):
    """A partitioner giving client 1 nothing (the guard must hold for any partitioner, present or future)."""

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        return self.dataset.select([] if partition_id == 1 else [partition_id])

    @property
    def num_partitions(self) -> int:
        return 3


def test_empty_partition_is_refused():
    partitioner = _LeavesOneEmpty()
    partitioner.dataset = datasets.Dataset.from_dict(
        {INDEX: np.arange(5), LABEL: np.zeros(5, dtype=np.int64)}
    )
    ctx = PartitionContext(num_clients=3, num_examples=5, seed=0, dataset="toy")
    with pytest.raises(ConfigError, match=r"every client gets at least one example .*client 1"):
        read_partitions(partitioner, "toy", {}, ctx)
