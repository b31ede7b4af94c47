"""One registry pattern for every kind of named thing: models, aggregators, combiners, challenges.

An entry is registered by a decorator with its metadata beside it, so everything derived from
the registry (default lists, options, command-line help, README tables) follows without edits
elsewhere::

    AGGREGATORS = Registry("aggregator")

    @AGGREGATORS.register("mean", default=True)
    def mean(probs, weights=None):
        '''The plain average.'''
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from medzoo.core.names import unknown_name


@dataclass(frozen=True)
class Entry:
    """One registered thing: its name, the object, a one-line description and its metadata."""

    name: str
    target: Any
    description: str
    meta: dict = field(default_factory=dict)

    def get(self, key: str, default=None):
        """A metadata value, ``default`` when the entry does not set it."""
        return self.meta.get(key, default)


class Registry:
    """Named entries of one kind, in registration order. A duplicate name is an error."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None, *, description: str | None = None, **meta) -> Callable:
        """Decorator: add the decorated object under ``name`` (default: its ``__name__``) with ``meta``.

        ``description`` defaults to the first line of the object's docstring.
        """
        def deco(target):
            key = name or target.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            doc = description or (inspect.getdoc(target) or "").split("\n")[0]
            self._entries[key] = Entry(key, target, doc, dict(meta))
            return target

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a throwaway entry clean up with it)."""
        self[name]
        del self._entries[name]

    def __getitem__(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(unknown_name(self.kind, name, self._entries, label="known", sort=False))
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, **where) -> list[str]:
        """Entry names in registration order, keeping those whose metadata equal every ``where`` item."""
        return [e.name for e in self if all(e.get(k) == v for k, v in where.items())]
