"""fedsim against pfl-research on the same CPU workload and the same cores, and against the FLOP floor.

    python bench/engine_vs_pfl.py                  # fedsim, pfl (1 process), pfl (torchrun, one per core), floor
    python bench/engine_vs_pfl.py --skip pfl-dist  # without the torchrun arm
    python bench/engine_vs_pfl.py --with-flower    # also stock Flower (slow: ~30 s a round, plus start-up)

The workload is ``engine_vs_flower.py``'s CPU one: 1000 clients per round from a population of 10 000 (``blobs``,
``iid``, 32 examples each), MLP 784-64-10, one epoch of SGD with batch 8 (4 steps), learning rate 0.05. Each arm
runs in a fresh process, one after another, on this machine's cores:

  fedsim      ``fedsim.engine.simulation.simulate`` as a user runs it: Ray workers (``engine.workers: auto``, one
              per core), one message per worker per round, clients vectorised. Median of rounds 2..R.
  pfl         pfl-research's own ``FederatedAveraging`` with its PyTorch backend (``PyTorchModel``,
              ``SimulatedBackend``), one process; each user's data are the same examples fedsim trains on.
              Median of rounds 2..R. One torch thread by default (``--pfl-threads``): with torch's default of
              one per core every small op is a parallel region, and on a machine shared with other work a
              descheduled thread stalls each of them (here: 33 s a round at 100 clients/round with 2 threads
              under load, against 0.4 s at 200 with 1).
  pfl-dist    the same script under ``torchrun --nproc_per_node=<cores>`` (pfl splits each cohort between the
              processes, one torch thread each; pfl's own multi-process mode on one machine).
  floor       the FLOP floor: the round's multiply-adds (forward, and backward without the input's gradient)
              divided by the rate this machine's batched matmul reaches (``torch.bmm`` on 16 × 512² × 512, all
              threads, best of 5).

pfl is optional: ``pip install --no-deps pfl==0.6.0 prv-accountant==0.2.0`` into fedsim's environment (pfl 0.6.0
declares ``dp-accounting<0.6``, fedsim needs 0.6; pfl's FedAvg path runs with 0.6). Without pfl the two pfl arms
say so in one line and are skipped. Results are printed as a table of s/round and ratios, and written as JSON with
``--out``. Recorded numbers: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from engine_vs_flower import make_scenario, run_fedsim, run_stock_flower, steady  # noqa: E402

WORKLOAD = "cpu"


def _scenario(args: argparse.Namespace, rounds: int):
    ns = argparse.Namespace(population=args.population, workers=args.workers or "auto")
    return make_scenario(WORKLOAD, args.clients_per_round, rounds, ns)


# ---- pfl-research --------------------------------------------------------------------------------------------


def run_pfl(args: argparse.Namespace) -> dict[str, Any] | None:
    """pfl's FedAvg on the workload; under torchrun every rank runs this and rank 0 reports."""
    import numpy as np
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops.selector import get_default_framework_module
    from pfl.metrics import Metrics, Weighted
    from pfl.model.pytorch import PyTorchModel

    from fedsim.engine.messages import train_config
    from fedsim.engine.setup import build_data

    if args.pfl_threads:
        torch.set_num_threads(args.pfl_threads)
    sc = _scenario(args, args.rounds)
    data = build_data(sc)  # the same examples and partitions fedsim trains on
    # Every user's (x, y) as torch tensors (pfl's to_tensor then moves nothing): one gather of all the rows,
    # client after client, then a view per user (the same examples as data.client_data).
    parts = data.partitions
    rows = torch.from_numpy(np.array(parts.indices, dtype=np.int64))
    xs, ys, off = data.train_x[rows], data.train_y[rows], parts.offsets.tolist()
    users = {cid: (xs[off[cid] : off[cid + 1]], ys[off[cid] : off[cid + 1]]) for cid in range(len(parts))}
    np.random.seed(0)
    torch.manual_seed(0)

    class MLP(torch.nn.Module):  # fedsim's "mlp" with hidden [64]: Flatten, Linear, ReLU, Linear
        def __init__(self) -> None:
            super().__init__()
            shape = sc.data.args["shape"]
            self.net = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)), 64), torch.nn.ReLU(),
                torch.nn.Linear(64, data.num_classes),
            )  # fmt: skip

        def forward(self, x):
            return self.net(x)

        def loss(self, x, y, eval=False):  # noqa: A002 (pfl's signature)
            self.eval() if eval else self.train()
            return torch.nn.functional.cross_entropy(self(x), y)

        def metrics(self, x, y, eval=False):  # noqa: A002
            loss = torch.nn.functional.cross_entropy(self(x), y, reduction="sum").item()
            return {"loss": Weighted(loss, len(x))}

    def make_dataset(cid):
        return Dataset(raw_data=list(users[cid]), user_id=cid)

    train = FederatedDataset(make_dataset, get_user_sampler("minimize_reuse", list(users)))
    val = FederatedDataset(make_dataset, get_user_sampler("minimize_reuse", list(users)))
    module = MLP()
    model = PyTorchModel(
        model=module,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),  # FedAvg
    )
    cfg = train_config(sc)
    assert cfg.optimizer == "sgd" and set(cfg.optimizer_args) == {"lr"}, cfg  # torch.optim.SGD(lr) in pfl
    marks: list[float] = []

    class Stopwatch(TrainingProcessCallback):
        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            marks.append(time.perf_counter())
            return False, Metrics()

    start = time.perf_counter()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=args.rounds,
            evaluation_frequency=args.rounds + 1,
            train_cohort_size=args.clients_per_round,
            val_cohort_size=None,
        ),
        backend=SimulatedBackend(training_data=train, val_data=val),
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=cfg.optimizer_args["lr"],
            local_num_epochs=cfg.epochs,
            local_batch_size=cfg.batch_size,
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=256),
        callbacks=[Stopwatch()],
        send_metrics_to_platform=False,
    )
    rounds = [b - a for a, b in zip([start, *marks[:-1]], marks, strict=True)]
    dist = get_default_framework_module().distributed
    if dist.global_rank != 0:
        return None
    return {
        "s_per_round": steady(rounds),
        "rounds": rounds,
        "processes": dist.world_size,
        "torch_threads": torch.get_num_threads(),
    }


# ---- the FLOP floor ------------------------------------------------------------------------------------------


def workload_flops(args: argparse.Namespace) -> float:
    """Multiply-adds ×2 of one round: every client's steps, forward and backward (no gradient for the input)."""
    import math

    sc = _scenario(args, 1)
    widths = [math.prod(sc.data.args["shape"]), *sc.model.args["hidden"], 10]
    b = sc.client.batch_size
    steps = sc.client.epochs * math.ceil(sc.data.args["samples_per_client"] / b)
    layers = list(zip(widths[:-1], widths[1:], strict=True))
    fwd = sum(2 * b * i * o for i, o in layers)
    bwd = (
        2 * fwd - 2 * b * layers[0][0] * layers[0][1]
    )  # weight grads for all, input grads for all but the first
    return float(args.clients_per_round * steps * (fwd + bwd))


def bmm_rate() -> float:
    """FLOP/s of a compute-bound batched matmul on all of this process's threads (best of 5)."""
    a, b = torch.randn(16, 512, 512), torch.randn(16, 512, 512)
    torch.bmm(a, b)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            torch.bmm(a, b)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * 16 * 512**3 / best


def run_floor(args: argparse.Namespace) -> dict[str, Any]:
    flops, rate = workload_flops(args), bmm_rate()
    return {"flops": flops, "bmm_flop_per_s": rate, "s_per_round": flops / rate}


# ---- the driver ----------------------------------------------------------------------------------------------


def _child(arm: str, args: argparse.Namespace) -> dict[str, Any] | str:
    """Run one arm in a fresh process; its result (the child's last line, JSON) or why it was skipped."""
    common = ["--clients-per-round", str(args.clients_per_round), "--rounds", str(args.rounds)]
    common += ["--flower-rounds", str(args.flower_rounds)]
    common += ["--population", str(args.population)] if args.population else []
    common += ["--workers", str(args.workers)] if args.workers else []
    common += ["--pfl-threads", str(args.pfl_threads)]
    script = [str(Path(__file__).resolve()), *common]
    if arm == "pfl-dist":
        procs = str(args.pfl_processes or os.cpu_count() or 1)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", procs]
        cmd += [*script, "--arm", "pfl"]
    else:
        cmd = [sys.executable, *script, "--arm", arm]
    env = dict(os.environ, PFL_PYTORCH_DEVICE="cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 and lines and arm == "pfl-dist":  # measured, then torch.distributed's teardown failed
        sys.stderr.write(
            f"bench: note: the pfl-dist arm printed its result, then torchrun exited with {proc.returncode} "
            "while tearing its processes down; the result is used\n"
        )
    elif proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        sys.exit(f"bench: error: the {arm} arm failed (output above)")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients-per-round", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per arm (median of all but the first)")
    parser.add_argument("--population", type=int, default=None, help="override the population (10 000)")
    parser.add_argument("--workers", type=int, default=None, help="fedsim workers (default: one per core)")
    parser.add_argument("--pfl-processes", type=int, default=None, help="torchrun processes (default: cores)")
    parser.add_argument(
        "--pfl-threads",
        type=int,
        default=1,
        help="torch threads of the one-process pfl arm (0: torch's default, one per core)",
    )
    parser.add_argument("--skip", choices=["fedsim", "pfl", "pfl-dist", "floor"], nargs="*", default=[])
    parser.add_argument("--with-flower", action="store_true", help="also stock Flower (slow)")
    parser.add_argument("--flower-rounds", type=int, default=2, help="stock Flower rounds (slow: keep small)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--arm", choices=["fedsim", "pfl", "floor", "flower"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:  # one measurement in this (fresh) process; the parent reads the last JSON line
        arms = {
            "fedsim": lambda: run_fedsim(_scenario(args, args.rounds)),
            "pfl": lambda: run_pfl(args),
            "floor": lambda: run_floor(args),
            "flower": lambda: run_stock_flower(_scenario(args, args.flower_rounds), args.flower_rounds),
        }
        result = arms[args.arm]()
        if result is not None:
            print(json.dumps(result), flush=True)
        return

    have_pfl = importlib.util.find_spec("pfl") is not None
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "pfl": _version("pfl") if have_pfl else None,
    }
    print(f"# bench/engine_vs_pfl.py  ({json.dumps(env)})", flush=True)
    arms = ["floor", "fedsim", "pfl", "pfl-dist"] + (["flower"] if args.with_flower else [])
    results: dict[str, Any] = {"env": env, "clients_per_round": args.clients_per_round}
    for arm in arms:
        if arm in args.skip:
            continue
        if arm.startswith("pfl") and not have_pfl:
            print(
                f"{arm}: skipped, pfl is not installed (pip install --no-deps pfl==0.6.0 prv-accountant==0.2.0)"
            )
            continue
        results[arm] = _child(arm, args)
        print(f"{arm}: {json.dumps(results[arm])}", flush=True)

    k = args.clients_per_round
    print()
    print(f"| arm ({k} clients/round) | s/round | fedsim is × faster | ÷ FLOP floor |")
    print("|---|---|---|---|")
    fs = results.get("fedsim", {}).get("s_per_round")
    floor = results.get("floor", {}).get("s_per_round")
    labels = {
        "fedsim": f"fedsim ({args.workers or 'auto: one per core'} Ray workers, vectorised)",
        "pfl": f"pfl-research, 1 process, torch threads: {results.get('pfl', {}).get('torch_threads', '')}",
        "pfl-dist": f"pfl-research, torchrun {results.get('pfl-dist', {}).get('processes', '')} processes",
        "flower": "stock Flower",
        "floor": "FLOP floor",
    }
    for arm in ("fedsim", "pfl", "pfl-dist", "flower", "floor"):
        if arm not in results:
            continue
        s = results[arm]["s_per_round"]
        faster = f"{s / fs:.2f}×" if fs and arm not in ("fedsim", "floor") else "-"
        print(
            f"| {labels[arm]} | {s:.3f} | {faster} | {s / floor:.1f}× |"
            if floor
            else f"| {labels[arm]} | {s:.3f} | {faster} | - |"
        )
    if floor:
        r = results["floor"]
        print(
            f"FLOP floor: {r['flops'] / 1e9:.2f} GFLOP per round at {r['bmm_flop_per_s'] / 1e9:.1f} GFLOP/s (torch.bmm)"
        )
    if "fedsim" in results:
        parts = ", ".join(
            f"{n.removeprefix('time_').removesuffix('_s')} {v:.3f} s"
            for n, v in results["fedsim"]["breakdown"].items()
        )
        print(f"fedsim round: {parts} (eval: last round only)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
