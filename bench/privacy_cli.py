"""How long ``fedsim privacy`` takes on a client-level scenario of deployment size, start to finish.

    python bench/privacy_cli.py                              # 10 000 clients, 10 000 rounds, rdp + prv + pld
    python bench/privacy_cli.py --clients 1000 --rounds 100  # smaller

Writes a client-level DP-FedAvg scenario (synthetic data, cohort 100 of N, σ 1.1, δ 1e-5) to a temporary folder,
runs ``fedsim privacy`` on it ``--reps`` times in a fresh Python each time (imports included, as a user sees it)
and prints, per run, the wall time, the CPU time of the child (user + system) and the 1-minute load average before
the run: on a shared machine the wall time means little without the load next to it.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = """\
name: privacy-bench
seed: 0
rounds: {rounds}
data: {{dataset: synthetic, partitioner: iid}}
population: {{clients: {clients}}}
model: {{name: mlp, args: {{hidden: [16]}}}}
client: {{epochs: 1, batch_size: 8, optimizer: {{name: sgd, lr: 0.1}}}}
strategy: {{name: fedavg, clients_per_round: {cohort}}}
privacy:
  level: client
  clip: 1.0
  noise_multiplier: 1.1
  delta: 1.0e-5
  sampling: poisson
  accountants: [rdp, prv, pld]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--cohort", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "privacy-bench.yaml"
        path.write_text(SCENARIO.format(rounds=args.rounds, clients=args.clients, cohort=args.cohort))
        cmd = [
            sys.executable,
            "-m",
            "fedsim.cli",
            "privacy",
            str(path),
            "--output",
            str(Path(tmp) / "report"),
        ]
        print(
            f"fedsim privacy: {args.clients} clients, {args.rounds} rounds, cohort {args.cohort}, rdp+prv+pld"
        )
        print("| run | wall s | CPU s (user+sys) | load avg (1 min) before |")
        print("|---|---|---|---|")
        for rep in range(1, args.reps + 1):
            load = os.getloadavg()[0]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                sys.exit(f"fedsim privacy failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(f"| {rep} | {wall:.2f} | {cpu:.2f} | {load:.2f} |")
        print(proc.stdout.strip())


if __name__ == "__main__":
    main()
