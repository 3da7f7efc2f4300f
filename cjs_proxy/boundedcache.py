"""The one bounded mapping behind every per-worker memory keyed by something clients choose.

Routes by host, last good routes, failure streaks by backend, log counters by event
and backend pools by URL are all keyed by values that come from requests or from Redis:
left unbounded, a stream of distinct hosts would grow a worker without end. They used
to be bounded four ways (empty everything, drop the oldest insert, pop and re-insert);
one rule now serves them all, **least recently used goes first**, because every one of
them is a memory of what is in use: a key read or written recently (a busy host, a
backend failing right now, an event still repeating) is the one worth keeping, and a
key nobody has touched for the longest time is the one the worker can forget at the
least cost. Forgetting is always safe at these sites (a route is looked up again, a
streak or a counter starts over, a pool is found again in the session), so the rule
only decides *which* key pays, and dropping one key at a time never makes every hot
key miss at once as emptying the whole mapping did.

Gevent switches greenlets only on I/O, so each method runs whole: no lock needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class BoundedCache(Generic[K, V]):
    """At most ``max_entries`` keys; reading or writing a key makes it the most recently used."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        """The value of ``key`` (now the most recently used), else ``default``."""
        try:
            self._entries.move_to_end(key)
        except KeyError:
            return default
        return self._entries[key]

    def __setitem__(self, key: K, value: V) -> None:
        """Store ``value`` as the most recently used; past the bound, forget the least recently used."""
        entries = self._entries
        entries[key] = value
        entries.move_to_end(key)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    @overload
    def pop(self, key: K) -> V | None: ...

    @overload
    def pop(self, key: K, default: D) -> V | D: ...

    def pop(self, key: K, default: object = None) -> object:
        """Forget ``key``, returning its value, else ``default``."""
        return self._entries.pop(key, default)

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held; a membership test is not a use."""
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """Keys from the least to the most recently used."""
        return iter(self._entries)
