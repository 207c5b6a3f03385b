"""Device profiles of the population and the virtual duration of a client's round.

Each logical client gets a compute speed (samples/s) and a link bandwidth (bytes/s), drawn once from the
scenario's distributions: O(population) floats, nothing else per client. A client's virtual duration is
``examples × epochs / speed + 2 × model_bytes / bandwidth`` (model down and update up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.scenario.schema import DevicesConfig, Distribution

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


@dataclass(frozen=True)
class DeviceProfiles:
    """Per-client speed and bandwidth arrays plus the population's availability and failure rates."""

    speed: np.ndarray
    bandwidth: np.ndarray
    availability: float
    failure: float

    @classmethod
    def sample(cls, cfg: DevicesConfig, n: int, rng: np.random.Generator) -> DeviceProfiles:
        return cls(draw(cfg.speed, n, rng), draw(cfg.bandwidth, n, rng), cfg.availability, cfg.failure)

    def duration(self, cid: int, *, examples: int, epochs: int, model_bytes: int) -> float:
        """Virtual seconds for client ``cid`` to receive the model, train and send its update."""
        return examples * epochs / self.speed[cid] + 2 * model_bytes / self.bandwidth[cid]
