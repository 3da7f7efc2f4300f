"""Backend health as the proxy sees it: which backend to try, and when to mark one dead.

Passive detection counts only signs that a backend is unwell: a refused or broken
connection, a timeout, a 502, a 504, a 503 without ``Retry-After`` (with it, the
backend is in maintenance) and, with ``server.deadBackendOn500``, a 500. Any other
answer (4xx, 501, 505...) says something about the request, not the backend: counting
those, as Hipache does, would let any client take an app's backends out of rotation
with a few requests of an unknown method. A backend is marked dead in ``dead:<host>``
for ``server.deadBackendTTL`` seconds, shared by every worker and proxy node, once one
worker has seen ``server.deadBackendAfter`` failures in a row from it (1, the default,
is Hipache's behaviour); any other answer resets its count. The only backend of a
frontend is never marked; and when every backend is marked, they are all tried anyway
(panic mode, as Envoy does) instead of answering 502 to everyone. Registered backends
(``backends:``) are treated alike, except that their marks go to ``deadurls:<host>`` by
URL: their ids are only one lookup's. Which of the backends that may be tried gets the
request is the frontend's balancing policy (``balance``).

Backends whose URL is malformed (``Route.unusable``: bad data in Redis) are never
chosen nor marked; they are reported in one rate-limited line naming the ``frontend:``
key, and a frontend left with none answers 502 (``InvalidFrontend``), never 500.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterable

from cjs_proxy.boundedcache import BoundedCache
from cjs_proxy.eventlog import EventLog
from cjs_proxy.exceptions import BackendDenied, BackendUnavailable, InvalidFrontend, NoLiveBackend
from cjs_proxy.pipeline.balance import Picker
from cjs_proxy.pipeline.router import Backend, Route
from cjs_proxy.pipeline.store import RouteStore, StoreError

log = logging.getLogger("cjs_proxy.pipeline.passive_health")
#: Backends whose failure streak a worker remembers; past this the streak least recently
#: added to is forgotten.
FAILURE_STREAKS_MAX = 4096
#: Malformed backend URLs named in one log line; longer URLs are cut at ``SHOWN_CHARS``.
MAX_SHOWN = 3
SHOWN_CHARS = 100


def live_backends(route: Route) -> list[Backend]:
    dead = route.frontend.dead
    return [b for b in route.usable if b.id not in dead]


def choose_backend(route: Route, rng: random.Random = random._inst,
                   tried: Collection[str] = (), pick: Picker | None = None) -> tuple[Backend, bool]:
    """A backend picked among the live ones not tried yet: by ``pick`` (the frontend's
    balancing policy, see ``balance``), else uniformly at random.

    Returns ``(backend, panic)``; ``panic`` is true when every usable backend is marked
    dead and the choice was made among all of them. Raises ``InvalidFrontend`` when the
    frontend has backends but none with a usable URL, ``NoLiveBackend`` when there is
    nothing (else) left to try.
    """
    if not route.backends:
        raise NoLiveBackend(f"frontend {route.frontend.key!r} lists no backend")
    usable = route.usable
    if not usable:
        raise InvalidFrontend(f"frontend {route.frontend.key!r} has no usable backend URL")
    dead = route.frontend.dead
    untried = [b for b in usable if b.url not in tried] if tried else usable
    candidates = [b for b in untried if b.id not in dead]
    panic = False
    if not candidates and all(b.id in dead for b in usable):
        candidates, panic = list(untried), True
    if not candidates:
        raise NoLiveBackend(f"no untried live backend left for {route.frontend.key!r}")
    if len(candidates) == 1:
        return candidates[0], panic
    if pick is not None:
        return pick(candidates), panic
    return candidates[rng.randrange(len(candidates))], panic


def shown(url: str) -> str:
    """``url`` for a log line: quoted, escaped (``ascii``: no CR/LF can get through), shortened."""
    return ascii(url[:SHOWN_CHARS]) + ("..." if len(url) > SHOWN_CHARS else "")


def is_failure_answer(status: int, headers: Iterable[tuple[str, str]], dead_on_500: bool) -> bool:
    """Whether a backend's HTTP answer is a sign that the backend itself is unwell.

    Only 502, 504, 503 without ``Retry-After`` and (with ``dead_on_500``) 500 are. A 501,
    505 or 4xx is the backend's verdict on the request, which any client chooses.
    """
    if status == 503:
        return not any(name.lower() == "retry-after" for name, _ in headers)
    if status == 500:
        return dead_on_500
    return status in (502, 504)


class BackendHealth:
    """The passive health policy of one worker: choosing, counting failures, marking dead in Redis."""

    def __init__(self, store: RouteStore, dead_ttl: int, dead_on_500: bool,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 dead_after: int = 1) -> None:
        self.store = store
        self.dead_ttl = dead_ttl
        self.dead_on_500 = dead_on_500
        self.dead_after = dead_after
        self.rng = rng or random.Random()
        self.events = EventLog(log, clock)
        #: Failures in a row per (requested host, backend URL); only backends on a streak are kept.
        self.streaks: BoundedCache[tuple[str, str], int] = BoundedCache(FAILURE_STREAKS_MAX)

    def choose(self, route: Route, tried: Collection[str] = (), pick: Picker | None = None) -> Backend:
        if route.unusable and not tried:  # once per request, not once per retry
            self.report_unusable(route)
        backend, panic = choose_backend(route, self.rng, tried, pick)
        if panic:
            self.events.record(f"panic:{route.host}",
                               f"every backend of {route.host} is marked dead: trying them anyway (panic mode)")
        return backend

    def report_unusable(self, route: Route) -> None:
        """One log line per frontend and interval naming its Redis key and the URLs skipped.

        The URLs are shown escaped and shortened: they are data from Redis, and must not
        be able to add lines to the log.
        """
        key = self.store.keys.frontend(route.frontend.key)
        skipped = [f"#{i} {shown(route.backends[i])} ({problem})"
                   for i, problem in sorted(route.unusable.items())[:MAX_SHOWN]]
        more = len(route.unusable) - len(skipped)
        outcome = ("no usable backend left: answering 502" if len(route.unusable) == len(route.backends)
                   else "serving from the others")
        self.events.record(f"unusable:{key}",
                           f"{key}: malformed backend URL skipped: {', '.join(skipped)}"
                           f"{f' and {more} more' if more else ''}; {outcome}")

    def check_answer(self, route: Route, backend: Backend, status: int,
                     headers: Iterable[tuple[str, str]]) -> None:
        """Count a failure answer against ``backend``; any other answer ends its streak."""
        if is_failure_answer(status, headers, self.dead_on_500):
            self.record_failure(route, backend, f"answered {status}")
        else:
            self.streaks.pop((route.host, backend.url), None)

    def record_error(self, route: Route, backend: Backend, error: BackendUnavailable) -> None:
        """A transport failure: counted against the backend, unless it was never tried.

        A backend in ``server.denyBackends`` is forbidden, not unwell: it is reported in
        one line per frontend and interval, naming the ``frontend:`` key, and never
        marked dead (a mark would be published to every Hipache tool listening).
        """
        if isinstance(error, BackendDenied):
            key = self.store.keys.frontend(route.frontend.key)
            self.events.record(f"denied:{key}", f"{key}: backend #{backend.id} refused: {error.detail}")
            return
        self.record_failure(route, backend, error.detail)

    def record_failure(self, route: Route, backend: Backend, reason: str) -> None:
        """One more failure in a row; the ``dead_after``-th marks the backend dead and starts over."""
        key = (route.host, backend.url)
        count = self.streaks.pop(key, 0) + 1
        if count >= self.dead_after:
            self.mark_dead(route, backend, reason)
            return
        self.streaks[key] = count
        self.events.record(f"failing:{route.host};{backend.url}",
                           f"{route.host}: backend #{backend.id} {backend.url} failed ({reason}), "
                           f"{count} of {self.dead_after} in a row before it is marked dead", logging.INFO)

    def mark_dead(self, route: Route, backend: Backend, reason: str) -> None:
        """Mark ``backend`` dead for the requested host, unless it is the only usable one.

        A static backend by its id in ``dead:`` (Hipache's), a registered one by its URL
        in ``deadurls:`` (its id is only this lookup's).
        """
        count = len(route.backends)
        if count - len(route.unusable) < 2:
            log.warning("%s: backend #%d %s is failing (%s); only backend, not marked dead",
                        route.host, backend.id, backend.url, reason)
            return
        written = True
        try:
            if route.frontend.is_registered(backend.id):
                self.store.mark_dead_url(route.host, backend.url, self.dead_ttl)
            else:
                written = self.store.mark_dead(route.host, backend.id, backend.url,
                                               route.frontend.static_count, self.dead_ttl)
        except StoreError as exc:
            log.error("%s: cannot mark backend #%d dead (%s): %s", route.host, backend.id, reason, exc)
            return
        log.warning("%s: backend #%d %s is dead (%s)%s", route.host, backend.id, backend.url, reason,
                    "" if written else "; external checker active, published only")
