"""Device profiles of the population and the virtual duration of a client's round.

Each logical client gets a compute speed (samples/s) and a link bandwidth (bytes/s), drawn once from the
scenario's distributions: O(population) floats (and a bool per client with stragglers), nothing else per client. A client's virtual duration is
``examples × epochs / speed + 2 × model_bytes / bandwidth`` (model down and update up), or with an ``F-X``
profile the paper's fixed τ_i; a straggler's (``faults.stragglers``) is ``slowdown`` times longer. Availability
is a probability per selection, or a trace of online intervals.
A pure function of the scenario's ``population.devices`` and ``faults`` blocks, so validation (a trace file's rows) and the
engine's loops share it without either importing the other.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace

import numpy as np

from fedsim.errors import ConfigError
from fedsim.faults import straggler_mask
from fedsim.randomness import Stream, generator
from fedsim.scenario.schema import AvailabilityTrace, DevicesConfig, Distribution, Scenario
from strategies.asynchronous import f_x_durations

_MIN_POSITIVE = 1e-9


def draw(dist: Distribution, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` positive draws. For ``lognormal``, ``mean`` is the arithmetic mean E[X] (not the log-space μ)."""
    if dist.dist == "constant":
        out = np.full(n, float(dist.value))  # type: ignore[arg-type]
    elif dist.dist == "lognormal":
        sigma = float(dist.sigma)  # type: ignore[arg-type]
        mu = np.log(float(dist.mean)) - sigma**2 / 2  # type: ignore[arg-type]
        out = rng.lognormal(mu, sigma, size=n)
    elif dist.dist == "normal":
        out = rng.normal(float(dist.mean), float(dist.sigma), size=n)  # type: ignore[arg-type]
    else:
        out = rng.uniform(float(dist.low), float(dist.high), size=n)  # type: ignore[arg-type]
    return np.maximum(out, _MIN_POSITIVE)


def load_trace(path: str, clients: int) -> dict[int, list[tuple[float, float]]]:
    """Online intervals per client from a CSV with the header ``client,start_s,end_s``.

    Raises:
        ConfigError: on ``population.devices.availability.trace`` when the file is missing or malformed.
    """
    field = "population.devices.availability.trace"
    expected = "a CSV file with the header client,start_s,end_s (one online interval per row)"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ConfigError(field, expected, f"{path} ({exc.strerror})") from None
    out: dict[int, list[tuple[float, float]]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            cid, start, end = int(row["client"]), float(row["start_s"]), float(row["end_s"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(field, expected, f"{path} line {line}: {dict(row)}") from None
        if not 0 <= cid < clients or not start < end:
            raise ConfigError(
                field, f"client ids in [0, {clients}) and start_s < end_s", f"{path} line {line}: {dict(row)}"
            )
        out.setdefault(cid, []).append((start, end))
    return out


@dataclass(frozen=True)
class DeviceProfiles:
    """Per-client speed and bandwidth arrays (or F-X durations), availability (a probability or per-client online
    intervals), the crash rate (``failure``: ``faults.crash``) and the stragglers (``straggler``: a bool per
    client, None without any; their durations are ``slowdown`` times longer)."""

    speed: np.ndarray
    bandwidth: np.ndarray
    availability: float
    failure: float
    fixed_durations: np.ndarray | None = None
    trace: dict[int, list[tuple[float, float]]] | None = None
    straggler: np.ndarray | None = None
    slowdown: float = 1.0

    @classmethod
    def sample(cls, cfg: DevicesConfig, n: int, rng: np.random.Generator) -> DeviceProfiles:
        """The profiles of ``population.devices`` alone (no stragglers: they need the scenario's seed and
        ``faults`` block, see :meth:`from_scenario`)."""
        speed, bandwidth = draw(cfg.speed, n, rng), draw(cfg.bandwidth, n, rng)
        fixed = None if cfg.f_x is None else np.asarray(f_x_durations(n, cfg.f_x))
        if isinstance(cfg.availability, AvailabilityTrace):
            return cls(speed, bandwidth, 1.0, cfg.failure, fixed, load_trace(cfg.availability.trace, n))
        return cls(speed, bandwidth, float(cfg.availability), cfg.failure, fixed)

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> DeviceProfiles:
        """A run's profiles: ``population.devices`` drawn from the ``DEVICE`` stream (the same draws as
        :meth:`sample`), the crash rate ``faults.crash``, and the stragglers of ``faults.stragglers`` drawn once
        from the ``STRAGGLER`` stream (``fedsim.faults.straggler_mask``)."""
        n, faults = scenario.population.clients, scenario.faults
        base = cls.sample(scenario.population.devices, n, generator(scenario.seed, Stream.DEVICE))
        lag = faults.stragglers
        mask = straggler_mask(scenario.seed, n, lag.fraction) if lag.slowdown > 1.0 else None
        slowdown = lag.slowdown if mask is not None else 1.0
        return replace(base, failure=faults.crash, straggler=mask, slowdown=slowdown)

    def slowdowns(self, cids: np.ndarray) -> np.ndarray:
        """Each of ``cids``' duration factor: ``slowdown`` for a straggler, 1 otherwise."""
        cids = np.asarray(cids, dtype=np.int64)
        if self.straggler is None:
            return np.ones(len(cids))
        return np.where(self.straggler[cids], self.slowdown, 1.0)

    def duration(self, cid: int, *, examples: int, epochs: int, model_bytes: int) -> float:
        """Virtual seconds for client ``cid`` to receive the model, train and send its update (its F-X τ_i with
        an F-X profile), times ``slowdown`` for a straggler."""
        if self.fixed_durations is not None:
            base = float(self.fixed_durations[cid])
        else:
            base = examples * epochs / self.speed[cid] + 2 * model_bytes / self.bandwidth[cid]
        if self.straggler is not None and self.straggler[cid]:
            return base * self.slowdown
        return base

    def online(self, cids: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        """Which of ``cids`` are online at virtual time ``t``: inside one of their trace intervals, else each
        independently with probability ``availability`` (one draw of ``rng`` per client either way, so a trace
        does not shift the rest of the run's randomness)."""
        draws = rng.random(len(cids))
        if self.trace is None:
            return draws < self.availability
        return np.asarray(
            [
                int(c) not in self.trace or any(a <= t < b for a, b in self.trace[int(c)])
                for c in cids
            ],
            dtype=bool,
        )
