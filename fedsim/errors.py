"""Typed, user-facing errors.

Every problem a user can fix (a scenario field, a file, an unknown name) is raised as a subclass of
``FedsimError`` (itself a ``ValueError``) with a message shaped
``<field> must be <constraint>. Got <value>.`` so the CLI can print it as one line and exit with code 2.
"""

from __future__ import annotations

from typing import Any


class FedsimError(ValueError):
    """Base class of every error a user can act on."""


class ConfigError(FedsimError):
    """A configuration value is wrong: names the field, the expectation and the value received."""

    def __init__(self, field: str, expected: str, got: Any = ..., *, source: str | None = None) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        got = "" if self.got is ... else f" Got {self.got!r}."
        return f"{prefix}{self.field} must be {self.expected}.{got}"

    def with_source(self, source: str) -> ConfigError:
        """Return the same error attributed to a file (e.g. the scenario path)."""
        return ConfigError(self.field, self.expected, self.got, source=source)


class UnknownNameError(ConfigError):
    """A name looked up in a registry does not exist; the message lists the known names."""

    def __init__(self, field: str, name: str, known: list[str], *, source: str | None = None) -> None:
        super().__init__(field, "one of " + ", ".join(sorted(known)), name, source=source)
        self.name = name
        self.known = sorted(known)


class EngineError(FedsimError):
    """The simulation could not proceed (workers did not register, a wait hit its deadline)."""


class DeployError(FedsimError):
    """A deployment could not start or finish (a SuperLink or SuperNode that failed, a run that was refused)."""
