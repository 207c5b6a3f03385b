"""One registry per extension point (strategies, optimizers, datasets, models, ...).

A registry is the single place a name from a scenario file is resolved; unknown names fail with the list of
known ones (``UnknownNameError``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedsim.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``field`` is the scenario field the names come from (used in errors)."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._items: dict[str, T] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (and aliases). Names are case-sensitive and unique."""

        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items:
                    raise ValueError(f"{self.field}: name {key!r} is registered twice")
                self._items[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name`` (non-decorator form)."""
        self.register(name)(obj)

    def get(self, name: str) -> T:
        """Return the object registered under ``name`` or raise ``UnknownNameError`` listing known names."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.field, name, list(self._items)) from None

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
