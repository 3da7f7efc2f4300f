"""A bounded cache whose entries are dropped one by one when a Redis key they were read from changes.

Each entry is stored with the names of the keys its value was read from (its
*dependencies*), and indexed by them: when Redis announces that keys changed
(client-side tracking, ``invalidation``), only the entries read from those keys are
dropped, at a cost proportional to the entries affected, never to the whole cache. A
flush (or a feed that lost track) drops everything.

**A read in flight while its keys change.** A caller reads Redis outside the cache
(a lookup takes a round trip, during which announcements keep arriving) and stores the
answer afterwards. It notes ``generation`` before reading and hands it to ``put``, which
refuses the answer when one of the entry's own dependencies changed since: every batch
of changes moves ``generation`` on and records, per key name, the generation of its last
change. A global counter bumped only when a *cached* entry is dropped would not do: the
entry being looked up is not cached yet, so a change to its own keys would drop nothing
and its older answer would be stored. The records are bounded (the least recently changed
name is forgotten first); a ``put`` that started before the last forgotten record can no
longer be checked and is refused, as is any ``put`` that started before a flush. When
nothing at all changed during the read (the usual case), ``put`` checks nothing.

Gevent switches greenlets only on I/O, so each method runs whole: no lock needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

from cjs_proxy.boundedcache import BoundedCache

V = TypeVar("V")


class TrackedCache(Generic[V]):
    """At most ``max_entries`` values by key, each dropped when one of its dependencies changes."""

    def __init__(self, max_entries: int, max_changes: int | None = None) -> None:
        self.entries: BoundedCache[str, V] = BoundedCache(max_entries)
        #: Dependency name -> keys of the entries read from it.
        self.dependents: dict[str, set[str]] = {}
        #: Entry key -> its dependency names (to take it out of ``dependents`` when it goes).
        self.dependencies: dict[str, tuple[str, ...]] = {}
        #: Moves on every batch of changes and every flush (see the module's docstring).
        self.generation = 0
        #: Name -> generation of its last change, the least recently changed first.
        self._changed_at: OrderedDict[str, int] = OrderedDict()
        self._max_changes = max_entries if max_changes is None else max_changes
        #: A ``put`` that started before this generation cannot be checked: refused.
        self._horizon = 0

    def get(self, key: str) -> V | None:
        return self.entries.get(key)

    def put(self, key: str, value: V, dependencies: tuple[str, ...], generation: int) -> bool:
        """Store ``value`` unless one of its ``dependencies`` changed since ``generation``
        (read before the value was); True when stored. A full cache first drops its least
        recently used entry, index included."""
        if not self.unchanged_since(generation, dependencies):
            return False
        entries = self.entries
        if key in entries:
            self._unindex(key)
        elif len(entries) >= entries.max_entries:
            self.drop(next(iter(entries)))  # BoundedCache iterates from the least recently used
        entries[key] = value
        self.dependencies[key] = dependencies
        dependents = self.dependents
        for name in dependencies:
            found = dependents.get(name)
            if found is None:
                dependents[name] = {key}
            else:
                found.add(key)
        return True

    def unchanged_since(self, generation: int, dependencies: Iterable[str]) -> bool:
        """Whether none of ``dependencies`` changed after ``generation`` (as far as is known)."""
        if generation == self.generation:
            return True
        if generation < self._horizon:
            return False
        changed_at = self._changed_at
        return all(changed_at.get(name, 0) <= generation for name in dependencies)

    def changed(self, names: Iterable[str]) -> set[str]:
        """Drop the entries read from any of ``names``, which just changed; returns their keys."""
        self.generation += 1
        generation = self.generation
        changed_at = self._changed_at
        affected: set[str] = set()
        for name in names:
            found = self.dependents.get(name)
            if found:
                affected.update(found)
            changed_at[name] = generation
            changed_at.move_to_end(name)
        while len(changed_at) > self._max_changes:
            _name, self._horizon = changed_at.popitem(last=False)
        for key in affected:
            self.drop(key)
        return affected

    def drop(self, key: str) -> None:
        """Forget ``key``'s entry, if held, and take it out of the index."""
        if key in self.entries:
            self.entries.pop(key)
            self._unindex(key)

    def clear(self) -> None:
        """Forget everything: reads in flight will not be stored either."""
        self.entries.clear()
        self.dependents.clear()
        self.dependencies.clear()
        self._changed_at.clear()
        self.generation += 1
        self._horizon = self.generation

    def _unindex(self, key: str) -> None:
        dependents = self.dependents
        for name in self.dependencies.pop(key, ()):
            found = dependents.get(name)
            if found is not None:
                found.discard(key)
                if not found:
                    del dependents[name]

    def __len__(self) -> int:
        return len(self.entries)
