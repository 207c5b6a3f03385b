"""Argument specs of nested choices: the keys a choice accepts, their types, ranges and the choice's OWN defaults.

Why this module exists: a scenario names a choice (a dataset, a partitioner, a model, a gossip topology) and gives
it a free-form mapping of arguments. Each registry entry declares an :class:`ArgSpec`, so that validation can check
those arguments and fill in the defaults of *that* choice without building anything, and the builder reads the
very same resolved mapping. A default therefore never leaks from one choice into another (Dirichlet's ``alpha``
is not handed to ``iid``), and the resolved scenario written next to a run's results shows every value used.

Errors are :class:`~fedsim.errors.ConfigError` shaped ``<field>.<key> must be <constraint>. Got <value>.``;
``bool`` is never a number (``alpha: true`` is a typo, not ``1``) and non-finite numbers are refused.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsim.errors import ConfigError


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()
"""The default of a parameter that has none: the user must give it."""

Check = Callable[[str, Any], Any]
"""``(dotted field, value) -> normalised value``; raises :class:`ConfigError`."""


@dataclass(frozen=True)
class Param:
    """One accepted key: its check, what it expects (in words) and its default.

    Attributes:
        name: the key.
        check: validates and normalises a given value (never called on a ``None`` default).
        expected: the constraint in words, e.g. ``"a number > 0"`` (messages and the docs' table).
        default: the value used when the key is absent; :data:`REQUIRED` when there is none; ``None`` when the
            builder derives it from what only the run knows (then ``default_doc`` says how).
        default_doc: how a derived (``None``) default is computed, for the docs' table.
    """

    name: str
    check: Check
    expected: str
    default: Any = REQUIRED
    default_doc: str = ""

    def validate(self, field: str, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        return self.check(field, value)


@dataclass(frozen=True)
class ArgSpec:
    """The arguments of one choice, in the order they are documented.

    Attributes:
        params: the accepted keys.
        cross: an optional check of the resolved mapping as a whole (e.g. ``low <= high``), given the field.
    """

    params: tuple[Param, ...] = ()
    cross: Callable[[str, dict[str, Any]], None] | None = field(default=None, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, Any]:
        """Every default (required keys left out)."""
        return {p.name: p.default for p in self.params if p.default is not REQUIRED}

    def resolve(self, values: Mapping[str, Any] | None, *, field: str, owner: str) -> dict[str, Any]:
        """The given arguments checked, with this choice's defaults filled in (key order: the spec's).

        Args:
            values: the mapping from the scenario (``None`` is read as empty).
            field: its dotted scenario field, e.g. ``"data.partitioner_args"``.
            owner: the choice, for the unknown-key message (e.g. ``"partitioner iid"``).

        Raises:
            ConfigError: not a mapping, an unknown key, a missing required key or a bad value.
        """
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ConfigError(field, f"a mapping of the arguments of {owner}", values)
        accepted = self.names
        for key in values:
            if key not in accepted:
                keys = ", ".join(accepted) if accepted else "none"
                raise ConfigError(f"{field}.{key}", f"an accepted key of {owner} (accepted: {keys})", key)
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in values:
                out[p.name] = p.validate(f"{field}.{p.name}", values[p.name])
            elif p.default is REQUIRED:
                raise ConfigError(f"{field}.{p.name}", f"given for {owner} ({p.expected})")
            else:
                out[p.name] = p.default
        if self.cross is not None:
            self.cross(field, out)
        return out


def is_number(value: Any, *, integer: bool = False) -> bool:
    """A finite int/float (an ``int`` when ``integer``), never a ``bool``."""
    kind = numbers.Integral if integer else numbers.Real
    return not isinstance(value, bool) and isinstance(value, kind) and math.isfinite(value)


def bounds_text(
    *, integer: bool, low: float | None, low_open: bool, high: float | None, high_open: bool
) -> str:
    """``"an integer >= 1"``, ``"a number > 0 and < 1"``, ..."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return ("an integer" if integer else "a number") + (" " + " and ".join(parts) if parts else "")


def num(
    name: str,
    default: Any = REQUIRED,
    *,
    integer: bool = False,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    default_doc: str = "",
    expected: str | None = None,
) -> Param:
    """A finite number (or integer) within bounds (``expected`` words the bounds, e.g. "a probability")."""
    expected = expected or bounds_text(
        integer=integer, low=low, low_open=low_open, high=high, high_open=high_open
    )

    def check(field: str, value: Any) -> Any:
        ok = is_number(value, integer=integer)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise ConfigError(field, expected, value)
        return int(value) if integer else value

    return Param(name, check, expected, default, default_doc)


def flag(name: str, default: Any = REQUIRED) -> Param:
    """``true`` or ``false``."""

    def check(field: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(field, "true or false", value)
        return value

    return Param(name, check, "true or false", default)


def choice(name: str, default: Any, options: Sequence[str]) -> Param:
    """One of a fixed set of strings."""
    expected = "one of " + ", ".join(options)

    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise ConfigError(field, expected, value)
        return value

    return Param(name, check, expected, default)


def text(name: str, default: Any = REQUIRED, *, default_doc: str = "") -> Param:
    """A non-empty string."""

    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(field, "a non-empty string", value)
        return value

    return Param(name, check, "a non-empty string", default, default_doc)


def integers(name: str, default: Any = REQUIRED, *, low: int | None = None, empty_ok: bool = False) -> Param:
    """A list of integers, each ``>= low`` when given (non-empty unless ``empty_ok``); resolved to a list."""
    expected = (
        ("a list" if empty_ok else "a non-empty list")
        + " of integers"
        + (f" >= {low}" if low is not None else "")
    )

    def check(field: str, value: Any) -> list[int]:
        if not isinstance(value, (list, tuple)) or (not value and not empty_ok):
            raise ConfigError(field, expected, value)
        for v in value:
            if not is_number(v, integer=True) or (low is not None and v < low):
                raise ConfigError(field, expected, value)
        return [int(v) for v in value]

    return Param(name, check, expected, list(default) if isinstance(default, tuple) else default)


def custom(name: str, default: Any, check: Check, expected: str, *, default_doc: str = "") -> Param:
    """A key with its own check (a nested mapping, a pair, a path ...)."""
    return Param(name, check, expected, default, default_doc)


def show_default(p: Param) -> str:
    """How a default reads in the docs' tables."""
    if p.default is REQUIRED:
        return "required"
    if p.default is None and p.default_doc:
        return p.default_doc
    if p.default is None:
        return "null"
    if isinstance(p.default, bool):
        return "true" if p.default else "false"
    if isinstance(p.default, Mapping):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in p.default.items()) + "}"
    return show_value(p.default)


def show_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(show_value(x) for x in v) + "]"
    return str(v)


def declares(spec: ArgSpec, **traits: Any) -> Callable[[Any], Any]:
    """Decorator: attach a registry entry's :class:`ArgSpec` (and traits such as a dataset's ``task``) to it."""

    def deco(obj: Any) -> Any:
        obj.arg_spec = spec
        for key, value in traits.items():
            setattr(obj, key, value)
        return obj

    return deco


def spec_of(obj: Any) -> ArgSpec:
    """The :class:`ArgSpec` a registry entry declared (:func:`declares`)."""
    spec = getattr(obj, "arg_spec", None)
    if not isinstance(spec, ArgSpec):
        raise TypeError(f"{obj!r} declares no ArgSpec (decorate it with fedsim.argspec.declares)")
    return spec
