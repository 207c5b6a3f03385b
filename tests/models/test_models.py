"""Model registry: shapes for every input kind, seeded initialisation, argument errors."""

from __future__ import annotations

import pytest
import torch

from fedsim.errors import ConfigError, UnknownNameError
from fedsim.models import build_model, model_names


@pytest.mark.parametrize(
    ("name", "shape"),
    [("mlp", (64,)), ("mlp", (1, 8, 8)), ("cnn", (64,)), ("cnn", (40,)), ("cnn", (3, 16, 16))],
)
def test_logits_shape_and_backward(name, shape):
    model = build_model(name, {}, input_shape=shape, num_classes=7, seed=0)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_seed_fixes_the_initial_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model("cnn", {}, input_shape=(64,), num_classes=10, seed=5).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model("cnn", {}, input_shape=(64,), num_classes=10, seed=5).state_dict()
    c = build_model("cnn", {}, input_shape=(64,), num_classes=10, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_mlp_hidden_widths():
    m = build_model("mlp", {"hidden": [32, 16]}, input_shape=(64,), num_classes=10)
    # 64·32+32 + 32·16+16 + 16·10+10 parameters, counted by hand.
    assert sum(p.numel() for p in m.parameters()) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    logistic = build_model("mlp", {"hidden": []}, input_shape=(64,), num_classes=10)
    assert sum(p.numel() for p in logistic.parameters()) == 650


def test_errors_name_the_field():
    with pytest.raises(
        ConfigError, match=r"model\.args\.width must be one of the arguments of model 'mlp': hidden"
    ):
        build_model("mlp", {"width": 3}, input_shape=(4,), num_classes=2)
    with pytest.raises(ConfigError, match=r"model\.args\.hidden must be a list of integers >= 1"):
        build_model("mlp", {"hidden": [0]}, input_shape=(4,), num_classes=2)
    with pytest.raises(UnknownNameError, match="model.name must be one of cnn, mlp, simple_cnn"):
        build_model("resnet", {}, input_shape=(4,), num_classes=2)
    assert model_names() == ["cnn", "mlp", "simple_cnn"]


def test_simple_cnn_has_pfl_research_parameter_count():
    # pfl-research's simple_cnn at CIFAR-10's shape: conv 3→32 (896) + conv 32→64 (18 496)
    # + Linear(14·14·64 → 128) (1 605 760) + Linear(128 → 10) (1 290) = 1 626 442 parameters.
    m = build_model("simple_cnn", {}, input_shape=(3, 32, 32), num_classes=10, seed=0)
    assert sum(p.numel() for p in m.parameters()) == 1_626_442
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"model\.name must be a model for flat inputs"):
        build_model("simple_cnn", {}, input_shape=(64,), num_classes=10)
    with pytest.raises(ConfigError, match=r"model\.args\.conv_dropout must be a probability"):
        build_model("simple_cnn", {"conv_dropout": 1.5}, input_shape=(3, 8, 8), num_classes=10)
