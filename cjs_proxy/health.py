"""Backend health as the proxy sees it: which backend to try, and when to mark one dead.

Passive detection follows Hipache: a backend that refuses connections, times out, or
answers 501, 502 or 504-599 (500 too with ``server.deadBackendOn500``; 503 only without
``Retry-After``, which means maintenance) is marked dead in ``dead:<host>`` for
``server.deadBackendTTL`` seconds, shared by every worker and proxy node. The only
backend of a frontend is never marked; and when every backend is marked, they are all
tried anyway (panic mode, as Envoy does) instead of answering 502 to everyone.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from .eventlog import EventLog
from .exceptions import NoLiveBackend
from .router import Route
from .store import RouteStore, StoreError

log = logging.getLogger("cjs_proxy.health")



@dataclass(frozen=True)
class Backend:
    """One backend of a frontend: its 0-based id (Hipache's) and its URL."""

    id: int
    url: str


def live_backends(route: Route) -> list[Backend]:
    dead = route.frontend.dead
    return [Backend(i, url) for i, url in enumerate(route.backends) if i not in dead]


def choose_backend(route: Route, rng: random.Random = random._inst,  # type: ignore[attr-defined]
                   tried: Collection[str] = ()) -> tuple[Backend, bool]:
    """A backend picked uniformly at random among the live ones not tried yet.

    Returns ``(backend, panic)``; ``panic`` is true when every backend is marked dead
    and the choice was made among all of them. Raises ``NoLiveBackend`` when there is
    nothing left to try.
    """
    if not route.backends:
        raise NoLiveBackend(f"frontend {route.frontend.key!r} lists no backend")
    candidates = [b for b in live_backends(route) if b.url not in tried]
    panic = False
    if not candidates and len(route.frontend.dead.intersection(range(len(route.backends)))) == len(route.backends):
        candidates = [Backend(i, url) for i, url in enumerate(route.backends) if url not in tried]
        panic = True
    if not candidates:
        raise NoLiveBackend(f"no untried live backend left for {route.frontend.key!r}")
    if len(candidates) == 1:
        return candidates[0], panic
    return candidates[rng.randrange(len(candidates))], panic


def is_dead_answer(status: int, headers: Iterable[tuple[str, str]], dead_on_500: bool) -> bool:
    """Whether a backend's HTTP answer means it is dead (Hipache's rule, with its bugs fixed)."""
    if status == 503:
        return not any(name.lower() == "retry-after" for name, _ in headers)
    if status == 500:
        return dead_on_500
    return status in (501, 502) or 504 <= status <= 599


class BackendHealth:
    """The passive health policy of one worker: choosing, and marking dead in Redis."""

    def __init__(self, store: RouteStore, dead_ttl: int, dead_on_500: bool,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.dead_ttl = dead_ttl
        self.dead_on_500 = dead_on_500
        self.rng = rng or random.Random()
        self.events = EventLog(log, clock)

    def choose(self, route: Route, tried: Collection[str] = ()) -> Backend:
        backend, panic = choose_backend(route, self.rng, tried)
        if panic:
            self.events.record(f"panic:{route.host}",
                               f"every backend of {route.host} is marked dead: trying them anyway (panic mode)")
        return backend

    def check_answer(self, route: Route, backend: Backend, status: int,
                     headers: Iterable[tuple[str, str]]) -> None:
        if is_dead_answer(status, headers, self.dead_on_500):
            self.mark_dead(route, backend, f"answered {status}")

    def mark_dead(self, route: Route, backend: Backend, reason: str) -> None:
        """Mark ``backend`` dead for the requested host, unless it is the only one."""
        count = len(route.backends)
        if count < 2:
            log.warning("%s: backend #%d %s is failing (%s); only backend, not marked dead",
                        route.host, backend.id, backend.url, reason)
            return
        try:
            written = self.store.mark_dead(route.host, backend.id, backend.url, count, self.dead_ttl)
        except StoreError as exc:
            log.error("%s: cannot mark backend #%d dead (%s): %s", route.host, backend.id, reason, exc)
            return
        log.warning("%s: backend #%d %s is dead (%s)%s", route.host, backend.id, backend.url, reason,
                    "" if written else "; external checker active, published only")
