"""Validated reading of the free-form ``data.args`` / ``data.partitioner_args`` mappings.

Scenario files pass these mappings through untyped, so each dataset and partitioner declares the keys it accepts
and reads them through ``Args``: unknown keys and out-of-range values fail as ``ConfigError`` naming the dotted
field (``data.partitioner_args.alpha``), never as an ``assert`` or a library's own ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fedsim.errors import ConfigError

_MISSING: Any = object()


class Args:
    """Typed accessors over one argument mapping.

    Args:
        values: the mapping from the scenario (``None`` is read as empty).
        field: its dotted scenario field, e.g. ``"data.partitioner_args"``.
        owner: the dataset or partitioner name, used in the unknown-key message.
        accepted: the keys this owner understands; any other key is a ``ConfigError``.
    """

    def __init__(self, values: Mapping[str, Any] | None, *, field: str, owner: str, accepted: Iterable[str]):
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ConfigError(field, "a mapping", values)
        accepted = sorted(accepted)
        for key in values:
            if key not in accepted:
                keys = ", ".join(accepted) if accepted else "none"
                raise ConfigError(f"{field}.{key}", f"an accepted key of {owner} (accepted: {keys})", key)
        self._values = dict(values)
        self.field = field

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def raw(self, key: str, default: Any = None) -> Any:
        """The value as given, or ``default``."""
        return self._values.get(key, default)

    def number(
        self,
        key: str,
        default: float | None = _MISSING,
        *,
        integer: bool = False,
        low: float | None = None,
        low_open: bool = False,
        high: float | None = None,
        high_open: bool = False,
    ) -> Any:
        """A finite int/float within bounds (``None`` passes through when it is the default)."""
        value = self._values.get(key, default)
        if value is _MISSING:
            raise ConfigError(f"{self.field}.{key}", "set")
        if value is None and default is None:
            return None
        return check_number(
            f"{self.field}.{key}",
            value,
            integer=integer,
            low=low,
            low_open=low_open,
            high=high,
            high_open=high_open,
        )

    def boolean(self, key: str, default: bool) -> bool:
        """A ``true``/``false`` value."""
        value = self._values.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.field}.{key}", "true or false", value)
        return value

    def choice(self, key: str, default: str, options: Sequence[str]) -> str:
        """One of a fixed set of strings."""
        value = self._values.get(key, default)
        if value not in options:
            raise ConfigError(f"{self.field}.{key}", "one of " + ", ".join(options), value)
        return str(value)

    def string(self, key: str, default: str | None) -> str | None:
        """A non-empty string (or the default, which may be ``None``)."""
        value = self._values.get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.field}.{key}", "a non-empty string", value)
        return value

    def integers(self, key: str, default: Sequence[int], *, low: int | None = None) -> tuple[int, ...]:
        """A non-empty list of integers, each ``>= low`` when given (e.g. an example shape)."""
        value = self._values.get(key, default)
        expected = "a non-empty list of integers" + ("" if low is None else f" >= {low}")
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{self.field}.{key}", expected, value)
        for v in value:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (low is not None and v < low):
                raise ConfigError(f"{self.field}.{key}", expected, value)
        return tuple(int(v) for v in value)

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        """A nested mapping, or ``None`` when absent."""
        value = self._values.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{self.field}.{key}", "a mapping", value)
        return value


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
