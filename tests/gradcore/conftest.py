"""The table of gradcore transforms: a test that takes ``make_transform`` runs once per row."""

from __future__ import annotations

from fedsim.gradcore import (
    add_decayed_weights,
    chain,
    clip_by_global_norm,
    identity,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_yogi,
    trace,
)

# One row per transform, built for a given number of client axes (reductions need it; element-wise ones ignore it):
# the stacked run uses batch_dims=1, the per-client loop batch_dims=0. Every transform joins the check here.
TRANSFORMS = {
    "identity": lambda bd: identity(),
    "scale": lambda bd: scale(0.3),
    "lr": lambda bd: scale_by_learning_rate(0.1),
    "lr_schedule": lambda bd: scale_by_learning_rate(lambda step: 0.1 / (1.0 + step)),
    "trace": lambda bd: trace(0.9),
    "trace_nesterov": lambda bd: trace(0.9, nesterov=True),
    "adam": lambda bd: scale_by_adam(),
    "adam_raw_eps_root": lambda bd: scale_by_adam(0.8, 0.9, 1e-3, eps_root=1e-4, bias_correction=False),
    "yogi": lambda bd: scale_by_yogi(),
    "yogi_bc": lambda bd: scale_by_yogi(0.8, 0.9, 1e-3, initial_v=1e-6, bias_correction=True),
    "weight_decay": lambda bd: add_decayed_weights(0.01),
    "clip_per_client": lambda bd: clip_by_global_norm(1.0, batch_dims=bd),
    "dp_sgd_like": lambda bd: chain(
        clip_by_global_norm(2.0, batch_dims=bd),
        add_decayed_weights(1e-3),
        trace(0.5),
        scale_by_learning_rate(0.1),
    ),
}


def pytest_generate_tests(metafunc):
    if "make_transform" in metafunc.fixturenames:
        metafunc.parametrize("make_transform", list(TRANSFORMS.values()), ids=list(TRANSFORMS))
