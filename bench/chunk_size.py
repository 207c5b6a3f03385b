"""How the vectorised trainer's speed depends on its memory budget (``engine.memory_budget_mb``), in process.

    python bench/chunk_size.py                        # CPU workload of bench/engine_vs_flower.py, 1000 clients
    python bench/chunk_size.py --workload gpu         # on a GPU

Trains one round's clients with ``train_cohort_vectorized`` under each budget and prints the median time and its
ratio to the unlimited budget (one stack per step-count bucket), measured in the same run. This is what
``fedsim.engine.memory.CPU_AUTO_BUDGET`` was chosen from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_vs_flower import WORKLOADS, make_scenario, prepared_round  # noqa: E402

from fedsim.engine.memory import chunk_size, client_footprint_bytes, optimizer_slots  # noqa: E402
from fedsim.engine.vectorized import optimizer_chain, train_cohort_vectorized  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="cpu")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--budgets-mb", type=float, nargs="+", default=[8, 16, 32, 64, 128, 256, 1024])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--population", type=int, default=None, help="override the workload's population")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="GPU workload's device")
    args = parser.parse_args()
    args.workers, args.gpus_per_worker = 1, 1.0
    sc = make_scenario(args.workload, args.clients, 1, args)
    model, theta, tasks, data, cfg, sync = prepared_round(sc)
    slots = optimizer_slots(
        optimizer_chain(model, cfg), {n: p.detach()[None] for n, p in model.named_parameters()}
    )
    per_client = client_footprint_bytes(model, cfg.batch_size, data.input_shape, optimizer_slots=slots)

    def timed(budget: int | None) -> float:
        c = type(cfg)(**{**cfg.__dict__, "memory_budget_bytes": budget})
        train_cohort_vectorized(model, theta, tasks[:16], data, c)  # warm-up
        times = []
        for _ in range(args.reps):
            sync()
            t = time.perf_counter()
            train_cohort_vectorized(model, theta, tasks, data, c)
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    print(
        f"# {args.workload}: {args.clients} clients, estimated {per_client / 2**20:.2f} MiB per stacked client, "
        f"torch threads {torch.get_num_threads()}"
    )
    base = timed(None)
    print("| budget MiB | clients per stack | s per round | ÷ unlimited |")
    print("|---|---|---|---|")
    print(f"| unlimited | {args.clients} | {base:.3f} | 1.00 |")
    for mb in args.budgets_mb:
        t = timed(int(mb * 2**20))
        print(
            f"| {mb:g} | {min(args.clients, chunk_size(per_client, int(mb * 2**20)))} | {t:.3f} | {t / base:.2f} |"
        )


if __name__ == "__main__":
    main()
