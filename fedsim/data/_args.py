"""Checked reading of the plain numbers ``load_federated_data`` takes (seed, population, test fraction).

The free-form ``data.args`` / ``data.partitioner_args`` mappings are checked by each dataset's and partitioner's
``ArgSpec`` (``fedsim.argspec``); this module keeps the one number check the data entry point needs, failing as a
``ConfigError`` naming the field, never as an ``assert`` or a library's own ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from fedsim.errors import ConfigError


def check_number(
    field: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
) -> Any:
    """Return ``value`` if it is a finite number (an int when ``integer``) in the bounds, else raise.

    ``bool`` is rejected although it is an ``int`` subclass: ``alpha: true`` is a typo, not ``1``.
    """
    kind = "an integer" if integer else "a number"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    expected = kind + (" " + " and ".join(parts) if parts else "")
    numeric = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not numeric or not math.isfinite(value):
        raise ConfigError(field, expected, value)
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(field, expected, value)
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(field, expected, value)
    return int(value) if integer else value
