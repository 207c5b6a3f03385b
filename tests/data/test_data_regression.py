"""Offline regression data (``diabetes``, ``regression``): shapes, determinism, standardisation, partitioners; the
softplus MLP with one output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.data import load_federated_data
from fedsim.errors import ConfigError
from fedsim.models import build_model


def load(dataset, *, args=None, partitioner="iid", seed=0, clients=4):
    return load_federated_data(
        dataset=dataset,
        args=args or {},
        partitioner=partitioner,
        partitioner_args={},
        test_fraction=0.2,
        num_clients=clients,
        seed=seed,
    )


def test_diabetes_is_sklearns_442_by_10_split_and_standardised_on_the_training_side():
    d = load("diabetes")
    assert d.task == "regression" and d.num_classes == 1 and d.input_shape == (10,)
    assert len(d.train_y) + len(d.test_y) == 442 and len(d.test_y) == round(0.2 * 442)
    assert d.train_y.dtype == torch.float32 and d.test_y.dtype == torch.float32
    torch.testing.assert_close(d.train_x.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.train_x.std(0, unbiased=False), torch.ones(10), atol=1e-4, rtol=0)
    assert float(d.train_y.mean()) == pytest.approx(0.0, abs=1e-5)
    assert sum(d.num_examples(c) for c in range(4)) == len(d.train_y)
    # the raw target is recovered up to the affine standardisation (sklearn's own copy is the oracle)
    from sklearn.datasets import load_diabetes

    y = load_diabetes().target
    pooled = np.sort(np.concatenate([d.train_y.numpy(), d.test_y.numpy()]))
    raw = np.sort((y - y.mean()) / y.std())  # same order statistics up to a positive affine map
    assert np.corrcoef(pooled, raw)[0, 1] > 0.9999


def test_generated_regression_has_california_housings_size_and_is_deterministic_in_the_seed():
    a, b, c = load("regression"), load("regression"), load("regression", seed=1)
    assert a.input_shape == (8,) and len(a.train_y) + len(a.test_y) == 20640
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_y, c.train_y)
    small = load("regression", args={"n": 300, "d": 3, "noise": 0.0})
    assert small.input_shape == (3,) and len(small.train_y) + len(small.test_y) == 300
    # a nonlinear teacher: the best linear fit leaves a residual although there is no label noise
    x = torch.cat([small.train_x, torch.ones(len(small.train_x), 1)], dim=1).double()
    beta = torch.linalg.lstsq(x, small.train_y.double().unsqueeze(1)).solution
    residual = float(((x @ beta).squeeze(1) - small.train_y.double()).pow(2).mean())
    assert 0.01 < residual < 0.9


@pytest.mark.parametrize("partitioner", ["dirichlet", "pathological", "shard"])
def test_label_partitioners_are_refused_for_regression(partitioner):
    with pytest.raises(ConfigError) as err:
        load("diabetes", partitioner=partitioner)
    assert err.value.field == "data.partitioner" and "\n" not in str(err.value)


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigError, match="data.args"):
        load("regression", args={"rows": 5})
    with pytest.raises(ConfigError, match="data.args"):
        load("diabetes", args={"n": 5})


def test_softplus_mlp_with_one_output_and_bad_activation():
    m = build_model(
        "mlp", {"hidden": [10], "activation": "softplus"}, input_shape=(8,), num_classes=1, seed=0
    )
    assert isinstance(m[2], torch.nn.Softplus) and m(torch.zeros(3, 8)).shape == (3, 1)
    assert sum(p.numel() for p in m.parameters()) == 8 * 10 + 10 + 10 + 1
    relu = build_model("mlp", {}, input_shape=(8,), num_classes=10, seed=0)
    assert isinstance(relu[2], torch.nn.ReLU)
    with pytest.raises(ConfigError, match="model.args.activation"):
        build_model("mlp", {"activation": "tanh"}, input_shape=(8,), num_classes=1)
