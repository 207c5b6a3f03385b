"""ε of every shipped DP scenario, as ``fedsim privacy`` publishes it and as the libraries compute it directly.

    python bench/privacy_table.py                        # every DP scenario in scenarios/, the Markdown table
    python bench/privacy_table.py --write                # ... and put it into docs/privacy.md, between the markers
    python bench/privacy_table.py scenarios/dp-fedavg.yaml  # some scenarios only

A DP scenario is any ``scenarios/*.yaml`` with a ``privacy`` block, or a DIFF2 / DP-GD scenario whose strategy
arguments set its noise itself. For each, ``fedsim privacy`` runs in a fresh Python (exactly what a user runs) and
its ``privacy.json`` gives the published ε per accountant and the mechanism it states. The same mechanism is then
accounted independently of ``fedsim.privacy.accounting``: dp_accounting's ``RdpAccountant`` (rdp; fedsim itself uses
opacus' ``RDPAccountant``, so this is a second implementation) and ``PLDAccountant`` (pld), opacus'
``PRVAccountant`` (prv), each called on the stated σ, q, number of steps and δ:

* client level: one Poisson-sampled Gaussian per round (``noise_multiplier_accounted``, ``sample_rate``,
  ``rounds``); a fixed-size cohort is dp_accounting's ``SampledWithoutReplacementDpEvent`` under replace-one
  adjacency (rdp only), with σ/2 per unit of sensitivity since one replaced client moves the sum by 2C;
* sample level: each accountant's worst client group (``worst_client_by_accountant``: q = 1/⌈n/B⌉ and its steps);
* DIFF2 / DP-GD: the sequence of mechanisms (``mechanisms``: σ and the number of rounds of each kind, q = 1).

The ``rel. diff`` column is |published − independent| / independent; ``tests/bench/test_privacy_table.py`` checks it
and that every DP scenario is in the table of ``docs/privacy.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "privacy.md"
START, END = "<!-- privacy-table:start -->", "<!-- privacy-table:end -->"
FULL_BATCH = ("diff2", "dp_gd")
STRATEGY_NOISE_KEYS = ("noise_multiplier", "noise_multiplier1", "noise_multiplier2")


def dp_scenarios(folder: Path = ROOT / "scenarios") -> list[Path]:
    """Every scenario file of ``folder`` that releases something under DP (see the module docstring)."""
    out = []
    for path in sorted(folder.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        strategy = raw.get("strategy") or {}
        noised_by_strategy = strategy.get("name") in FULL_BATCH and any(
            k in (strategy.get("args") or {}) for k in STRATEGY_NOISE_KEYS
        )
        if raw.get("privacy") is not None or noised_by_strategy:
            out.append(path)
    return out


def published(path: Path) -> dict[str, Any]:
    """``privacy.json`` as ``fedsim privacy`` writes it for ``path``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fedsim.cli", "privacy", str(path), "--output", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
        if proc.returncode != 0:
            sys.exit(f"fedsim privacy {path} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return json.loads((Path(tmp) / "privacy.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------ independent accounting


def _rdp(events: list[tuple[Any, int]], delta: float, replace_one: bool = False) -> float:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    relation = dp_accounting.NeighboringRelation.REPLACE_ONE if replace_one else None
    acc = (
        rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
        if relation
        else rdp_privacy_accountant.RdpAccountant()
    )
    for event, count in events:
        acc.compose(event, count)
    return float(acc.get_epsilon(delta))


def _pld(events: list[tuple[Any, int]], delta: float) -> float:
    import dp_accounting

    composed = dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(e, k) for e, k in events])
    return float(dp_accounting.pld.PLDAccountant().compose(composed).get_epsilon(delta))


def _prv(history: list[tuple[float, float, int]], delta: float) -> float:
    import numpy as np
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    with np.errstate(divide="ignore"):  # log(0) at q = 1 inside opacus, masked out by its np.where
        return float(acc.get_epsilon(delta))


def independent(record: dict[str, Any], accountant: str) -> tuple[float, str]:
    """ε of the mechanism ``record`` states, by ``accountant``, straight from the libraries; and that mechanism
    in words (σ, q, steps)."""
    import dp_accounting

    delta = record["delta"]
    if record.get("mechanisms"):  # DIFF2 / DP-GD: a sequence of full-batch Gaussians
        seq = [(m["noise_multiplier"], m["sample_rate"], m["rounds"]) for m in record["mechanisms"]]
    elif record["level"] == "sample":
        g = record["worst_client_by_accountant"][accountant]
        seq = [(record["noise_multiplier_accounted"], g["sample_rate"], g["steps"])]
    else:
        seq = [(record["noise_multiplier_accounted"], record["sample_rate"], record["rounds"])]
    words = " + ".join(f"σ {s:.4g}, q {q:.4g}, {k} steps" for s, q, k in seq)
    events = [
        (dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), k) for s, q, k in seq
    ]
    if record.get("sampling") == "fixed_size" and record["level"] == "client":
        if accountant != "rdp":
            raise ValueError(f"{accountant} does not account fixed-size cohorts")
        (s, _, k), n = seq[0], record["population"]
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            n, record["cohort"], dp_accounting.GaussianDpEvent(s / 2)
        )
        return _rdp(
            [(event, k)], delta, replace_one=True
        ), f"{words}, fixed-size cohort {record['cohort']}/{n}"
    if accountant == "rdp":
        return _rdp(events, delta), words
    if accountant == "pld":
        return _pld(events, delta), words
    return _prv(seq, delta), words


LIBRARY = {
    "rdp": "dp_accounting RdpAccountant",
    "prv": "opacus PRVAccountant",
    "pld": "dp_accounting PLDAccountant",
}


def rows(path: Path) -> list[dict[str, Any]]:
    """One row per accountant of the scenario: published and independent ε."""
    record = published(path)
    out = []
    for accountant, eps in record["epsilon"].items():
        ind, words = independent(record, accountant)
        out.append(
            {
                "scenario": path.name,
                "level": record["level"],
                "accountant": accountant,
                "mechanism": words,
                "delta": record["delta"],
                "published": float(eps),
                "independent": ind,
                "rel_diff": abs(float(eps) - ind) / ind,
            }
        )
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | level | accountant | mechanism accounted (σ, q, steps) | δ | ε published | ε independent "
        "| independent by | rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['scenario']} | {r['level']} | {r['accountant']} | {r['mechanism']} | {r['delta']:g} | "
            f"{r['published']:.4f} | {r['independent']:.4f} | {LIBRARY[r['accountant']]} | {r['rel_diff']:.1e} |"
        )
    return "\n".join(lines)


def write_doc(table_md: str, doc: Path = DOC) -> None:
    text = doc.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"{doc} must contain the markers {START} and {END}")
    doc.write_text(pattern.sub(lambda _: f"{START}\n{table_md}\n{END}", text), encoding="utf-8")


def doc_scenarios(doc: Path = DOC) -> set[str]:
    """The scenario names in the table between the markers of ``doc``."""
    text = doc.read_text(encoding="utf-8")
    inside = text.split(START, 1)[1].split(END, 1)[0] if START in text and END in text else ""
    return {
        line.split("|")[1].strip()
        for line in inside.splitlines()
        if line.startswith("| ") and ".yaml" in line
    }


def main() -> None:
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's notes on RDP orders it leaves out
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", type=Path, help="scenario files (default: every DP scenario)")
    parser.add_argument("--write", action="store_true", help=f"update the table in {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    paths = args.scenarios or dp_scenarios()
    table = [row for path in paths for row in rows(path)]
    md = markdown(table)
    print(md)
    if args.write:
        write_doc(md)
        print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
