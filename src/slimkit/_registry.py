"""A small name → object registry, used for criteria, observers, losses, models, decompositions and stages."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from slimkit._errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects so that a recipe can name anything the library can do.

    ``kind`` is used in error messages (``unknown criterion 'l3': choose one of l1, l2, ...``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@registry.register("l1")`` registers the decorated object under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ConfigError(f"{self.kind} '{name}' is registered twice: pick another name")
            self._items[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as ``name``; a clear error listing the choices if there is none."""
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items)) or "(none registered)"
            raise ConfigError(f"unknown {self.kind} '{name}': choose one of {choices}") from None

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata given at registration (e.g. a model's default input shape)."""
        self.get(name)
        return dict(self._meta[name])

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob pattern, sorted."""
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
