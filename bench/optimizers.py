"""Every registered client optimizer on the same small model and budget: final loss, step time, state size.

    python bench/optimizers.py                 # MLP 64-64-10 on digits, 300 steps of batch 32, 3 repetitions

For each name in ``clients.optimizers.names()`` it trains the same initial model on the same batches with
``clients.optimizers.build(name, model.named_parameters(), lr=...)`` and prints the final training loss, the
test accuracy, the median time per step relative to plain SGD measured in the same run, and the optimizer
state's bytes per parameter, for this model and for one 1024×1024 layer (8-bit states keep fp32 for tensors
under 4096 elements; on the large layer they should show about 2 for Adam's two moments, against 8 in fp32).
Learning rates: ``LR`` below (one value per optimizer, picked once for this problem; the defaults of normalised
methods are per-element step sizes). Recorded output: ``docs/optimizers.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.optimizers import build, make_chain, names  # noqa: E402
from fedsim.data import load_federated_data  # noqa: E402

LR = {
    "sgd": 0.1,
    "sgd8bit": 0.1,
    "agvm_sgd": 0.1,
    "scale": 1e-2,
    "swan": 1e-2,
    "sinkgd": 2e-2,
    "lanton": 1e-2,
}
DEFAULT_LR = 3e-3


def state_bytes(tree: Any) -> int:
    """Bytes of every tensor in an optimizer state tree."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(state_bytes(v) for v in tree.values())
    if isinstance(tree, (tuple, list)):
        return sum(state_bytes(v) for v in tree)
    return 0


def big_layer_bytes_per_param(name: str) -> float:
    """State bytes per parameter for one 1024×1024 weight matrix (small tensors keep fp32 state in 8-bit mode)."""
    w = {"w": torch.zeros(1024, 1024)}
    return (
        state_bytes(make_chain(name, {"w": "matrix"}, lr=LR.get(name, DEFAULT_LR)).init(w)) / w["w"].numel()
    )


def run(name: str, steps: int, batch: int, seed: int) -> dict[str, float]:
    data = load_federated_data(
        dataset="digits",
        args={},
        partitioner="iid",
        partitioner_args={},
        test_fraction=0.2,
        num_clients=1,
        seed=0,
    )
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = build(name, model.named_parameters(), lr=LR.get(name, DEFAULT_LR))
    gen = torch.Generator().manual_seed(seed)
    x, y = data.train_x, data.train_y
    times, losses = [], []
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    with torch.no_grad():
        acc = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "loss": statistics.mean(losses[-20:]),
        "acc": acc,
        "step_s": statistics.median(times),
        "bytes_per_param": state_bytes(opt.chain_state) / n_params,  # type: ignore[attr-defined]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3, help="seeds; the table shows medians")
    parser.add_argument("--only", nargs="*", default=None, help="optimizer names (default: all registered)")
    args = parser.parse_args()
    chosen = args.only or names()
    results = {}
    for name in ["sgd", *[n for n in chosen if n != "sgd"]]:
        reps = [run(name, args.steps, args.batch, seed) for seed in range(args.reps)]
        results[name] = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
        results[name]["big_bytes_per_param"] = big_layer_bytes_per_param(name)
    base = results["sgd"]["step_s"]
    print(
        f"# bench/optimizers.py: MLP 64-64-10 on digits, {args.steps} steps of batch {args.batch}, "
        f"median of {args.reps} seeds, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        "| optimizer | lr | final train loss | test accuracy | step time ÷ SGD | state bytes/param "
        "| state bytes/param, 1024×1024 layer |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {LR.get(name, DEFAULT_LR):g} | {r['loss']:.4f} | {r['acc']:.3f} | "
            f"{r['step_s'] / base:.2f} | {r['bytes_per_param']:.2f} | {r['big_bytes_per_param']:.2f} |"
        )


if __name__ == "__main__":
    main()
