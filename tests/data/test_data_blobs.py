"""``blobs``: shapes, determinism, the mixture's parameters, its closed-form separability and its memory cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import load

from fedsim.errors import ConfigError


def _blobs(args: dict | None = None, **overrides):
    return load(dataset="blobs", args=args or {}, **overrides)


def test_shapes_counts_and_labels():
    data = _blobs(
        {"shape": [3, 4, 5], "classes": 7, "samples_per_client": 6, "test_samples": 50}, num_clients=9
    )
    assert data.input_shape == (3, 4, 5) and data.num_classes == 7
    assert data.train_x.shape == (54, 3, 4, 5) and data.test_x.shape == (50, 3, 4, 5)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert all(data.num_examples(c) == 6 for c in range(9))  # iid: samples_per_client each
    for y in (data.train_y, data.test_y):
        assert int(y.min()) >= 0 and int(y.max()) < 7
    assert len(torch.unique(data.train_y)) == 7  # 54 uniform draws over 7 classes: all seen (P(miss) < 1e-3)


def test_defaults():
    data = _blobs(num_clients=3)
    assert data.input_shape == (784,) and data.num_classes == 10
    assert len(data.train_y) == 3 * 32 and len(data.test_y) == 1000


def test_bit_identical_under_a_seed_and_seed_sensitive():
    args = {"shape": [2, 8], "samples_per_client": 5}
    a, b, c = _blobs(args), _blobs(args), _blobs(args, seed=1)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert np.array_equal(a.partitions.indices, b.partitions.indices)
    assert not torch.equal(a.train_x, c.train_x)


def test_test_set_does_not_depend_on_the_population():
    """The test set is drawn before the training set, so scale runs of one seed share one yardstick."""
    small, large = _blobs({"shape": [6]}, num_clients=2), _blobs({"shape": [6]}, num_clients=50)
    assert torch.equal(small.test_x, large.test_x) and torch.equal(small.test_y, large.test_y)


def _class_means(data) -> torch.Tensor:
    x = data.train_x.flatten(1)
    return torch.stack([x[data.train_y == c].mean(0) for c in range(data.num_classes)])


def test_mixture_parameters():
    """Oracle (the definition): x - center[y] ~ N(0, noise^2 I) and centers ~ N(0, I), so with many examples
    per class the within-class std is ``noise`` and squared center distances average 2 * D."""
    dim, noise = 40, 0.5
    data = _blobs({"shape": [dim], "classes": 4, "samples_per_client": 500, "noise": noise}, num_clients=8)
    means = _class_means(data)
    residual = data.train_x - means[data.train_y]
    assert abs(float(residual.std()) - noise) < 0.02 * noise  # 16000 x 40 draws: relative s.e. ~ 0.3%
    dist2 = torch.cdist(means, means).pow(2)[~torch.eye(4, dtype=torch.bool)]
    # 6 distinct pairs of chi^2 with 40 degrees of freedom (x 2): mean 80, s.e. of the mean ~ 6 (pairs correlate)
    assert 2 * dim * 0.6 < float(dist2.mean()) < 2 * dim * 1.4


def test_nearest_center_beats_chance_by_far():
    """Oracle (closed form): with true centers c_i, x is closer to c_j than to c_y with probability
    Phi(-|c_y - c_j| / (2 noise)); |c_y - c_j| ~ sqrt(2 * 784) ~ 40, so at noise 1 that is Phi(-20) ~ 1e-88 per
    pair. Class means of 32 examples per class move each center by noise / sqrt(32) per coordinate, which leaves
    the margin far above 0, so nearest-class-mean accuracy is ~1 (chance: 0.1)."""
    data = _blobs(num_clients=10)  # defaults: 784 dims, 10 classes, noise 1, 320 training examples
    pred = torch.cdist(data.test_x, _class_means(data)).argmin(1)
    assert float((pred == data.test_y).float().mean()) > 0.99


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"shape": []}, "data.args.shape"),
        ({"shape": [0]}, "data.args.shape"),
        ({"shape": 784}, "data.args.shape"),
        ({"shape": [28, True]}, "data.args.shape"),
        ({"shape": [2.5]}, "data.args.shape"),
        ({"classes": 1}, "data.args.classes"),
        ({"samples_per_client": 0}, "data.args.samples_per_client"),
        ({"test_samples": 0}, "data.args.test_samples"),
        ({"noise": 0}, "data.args.noise"),
        ({"noise": "loud"}, "data.args.noise"),
        ({"centres": 3}, "data.args.centres"),
        ({"shape": [10**6], "samples_per_client": 10**4}, "data.args"),  # 4e10 values: a typo, refused
    ],
)
def test_bad_args_name_their_field(args, field):
    with pytest.raises(ConfigError) as info:
        _blobs(args)
    message = str(info.value)
    assert message.startswith(field + " must be ") and "\n" not in message


_RSS_SCRIPT = """
import json, sys
from fedsim.data import load_federated_data

def load(clients):
    return load_federated_data(dataset="blobs", args={}, partitioner="iid", partitioner_args={},
                               test_fraction=0.2, num_clients=clients, seed=0)

def status(key):  # kB
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) * 1024

load(2)  # imports and first-call allocations out of the way
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
data = load(int(sys.argv[1]))
print(json.dumps({"growth": status("VmHWM") - before, "train_bytes": data.train_x.nbytes}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_generated_in_float32_without_a_float64_copy():
    """1000 clients x 32 x 784 float32 = 100 MB. A float64 draw (numpy's default) would need >= 2x that at peak;
    generating in place needs the tensor plus the ~16 MB center-gather chunk and the small test set."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, "1000"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"blobs 1000 x 32 x 784: peak RSS growth {measured['growth'] / 1e6:.0f} MB for "
        f"{measured['train_bytes'] / 1e6:.0f} MB of training data"
    )
    assert measured["growth"] < 1.4 * measured["train_bytes"]
