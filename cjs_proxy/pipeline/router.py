"""Host header to route: normalisation, Hipache's lookup order, and a last-good fallback.

Lookup order (Hipache's): the exact host, then ``*.<suffix>`` from the longest suffix
to the shortest (at most five labels, so an abusive host cannot make a long lookup),
then ``*``. The first non-empty ``frontend:`` list wins. Its backend URLs are checked
here, once per route: Redis is written by other tools, and a malformed URL must cost
that backend its turn, not the request a 500.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from cjs_proxy.boundedcache import BoundedCache
from cjs_proxy.exceptions import InvalidHost, StoreUnavailable, UnknownHost
from cjs_proxy.pipeline.invalidation import InvalidationFeed
from cjs_proxy.pipeline.redis_keys import KeySpace
from cjs_proxy.pipeline.store import Frontend, LimitAnswer, RouteStore, StoreError
from cjs_proxy.pipeline.tracked import TrackedCache

log = logging.getLogger("cjs_proxy.pipeline.router")

#: Longest wildcard suffix tried, in labels (Hipache's bound).
MAX_WILDCARD_LABELS = 5
#: Hosts whose last good route is remembered for when Redis is unreachable (and hosts
#: in the route cache); past this the least recently used is forgotten.
STALE_ROUTES_MAX = 10_000

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_IPV6 = re.compile(r"\[[0-9a-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
#: A backend URL's authority: optional user info (RFC 3986 characters), a host (name,
#: IPv4, bracketed IPv6) and an optional port.
_BACKEND_AUTHORITY = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:%-]*@)?"
                                r"(?:[A-Za-z0-9_.-]+|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{0,5}))?")


def normalize_host(raw: str | None) -> str:
    """The lookup form of a ``Host`` value: no port, lowercase, no trailing dot.

    Raises ``InvalidHost`` for a missing, empty, duplicated (gunicorn joins repeated
    headers with commas) or malformed value.
    """
    if not raw:
        raise InvalidHost("missing Host header")
    host = raw.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1:]
        if end < 0 or not _IPV6.fullmatch(name):
            raise InvalidHost(f"malformed Host header {raw!r}")
    else:
        name, sep, port = host.partition(":")
        rest = sep + port
        name = name[:-1] if name.endswith(".") else name
        if len(name) > 253 or not _HOSTNAME.fullmatch(name):
            raise InvalidHost(f"malformed Host header {raw!r}")
    if rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:])):
        raise InvalidHost(f"malformed port in Host header {raw!r}")
    return name


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def backend_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a backend, or None when it can.

    A backend is ``http://`` or ``https://``, a host (name, IPv4 or bracketed IPv6) and
    an optional port 1-65535; a path is allowed and ignored, as Hipache does. Whitespace
    and control characters are refused anywhere: they would end up in request lines,
    log lines and debug headers. The host and port are matched here rather than taken
    from ``urlsplit``, which accepts hosts that urllib3 then refuses with an exception.
    """
    if not url.isprintable() or " " in url:
        return "whitespace or control characters"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return "not an http:// or https:// URL"
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    address = _BACKEND_AUTHORITY.fullmatch(authority)
    if address is None or (address.group("ipv6") and not _is_ipv6(address.group("ipv6"))):
        return "no valid host and port"
    port = address.group("port")
    if port and not 1 <= int(port) <= 65535:
        return "port out of range"
    return None


def lookup_candidates(host: str) -> list[str]:
    """Frontend names to try for ``host``, in order: exact, wildcards long to short, ``*``."""
    labels = host.split(".")[-(MAX_WILDCARD_LABELS + 1):]
    candidates = [host]
    candidates.extend("*." + ".".join(labels[i:]) for i in range(1, len(labels)))
    candidates.append("*")
    return candidates


class Backend(NamedTuple):
    """One backend of a frontend: its 0-based id (Hipache's) and its URL."""

    id: int
    url: str


@dataclass(frozen=True)
class Route:
    """A resolved request: the host asked for and the frontend that answers it."""

    host: str
    frontend: Frontend
    #: The rate limiter's verdict, still encoded (``ratelimit`` reads it), when limits
    #: were applied; None otherwise (or when stale).
    limit_answer: LimitAnswer | None = None
    #: True when Redis was unreachable and this is the host's last good route.
    stale: bool = False
    #: When (``Router.clock``) its first registered backend expires: a cached route is
    #: dropped then, since an expiry is not a write and Redis announces nothing.
    expires: float = math.inf

    @property
    def identifier(self) -> str:
        return self.frontend.identifier

    @property
    def backends(self) -> tuple[str, ...]:
        return self.frontend.backends

    def with_limit_answer(self, answer: LimitAnswer | None) -> Route:
        """The same route with another request's verdict, keeping what was worked out once.

        Called for every limited request on a cached route: the backends are checked on
        the cached route (once) and the copy is made field by field (``dataclasses.replace``
        inspects the class each time).
        """
        route = Route(self.host, self.frontend, answer, self.stale, self.expires)
        route.__dict__["unusable"] = self.unusable  # cached_properties' values, shared
        route.__dict__["usable"] = self.usable
        return route

    @cached_property
    def unusable(self) -> Mapping[int, str]:
        """Backend ids whose URL is malformed, with why: never chosen, never marked dead."""
        problems = {}
        for backend_id, url in enumerate(self.backends):
            problem = backend_url_problem(url)
            if problem is not None:
                problems[backend_id] = problem
        return problems

    @cached_property
    def usable(self) -> tuple[Backend, ...]:
        """The backends whose URL is well formed, dead or not: worked out once per route,
        however many requests a cached route serves."""
        unusable = self.unusable
        return tuple(Backend(i, url) for i, url in enumerate(self.backends) if i not in unusable)


#: Key names without the driver's prefix, as the invalidation feed reports them.
_NAMES = KeySpace()


def dependencies(route: Route) -> tuple[str, ...]:
    """The keys ``route`` was read from (``lua/route.lua``), without the driver's prefix.

    ``frontend:`` and ``backends:`` of every candidate up to the one that matched: a
    write to an earlier one may make it match instead (a later one was never read);
    ``dead:`` and ``deadurls:`` of the requested host (marks are kept by it); the
    matched frontend's ``identifier:``, ``balance:`` and ``weights:``; and its ``tier:``
    (read afresh by every limited request, not kept in the route: listed so a tier change
    still renews the route, as any routing change did before).
    """
    host, matched = route.host, route.frontend.key
    names = [_NAMES.dead(host), _NAMES.dead_urls(host)]
    for candidate in lookup_candidates(host):
        names.append(_NAMES.frontend(candidate))
        names.append(_NAMES.backends(candidate))
        if candidate == matched:
            break
    names.extend((_NAMES.identifier(matched), _NAMES.balance(matched), _NAMES.weights(matched),
                  _NAMES.tier(matched)))
    return tuple(names)


class RouteCache:
    """Routes by requested host, each kept until Redis announces a change to a key it was read from.

    The feed names the keys that changed; only the routes read from them are dropped
    (``dependencies``, ``tracked.TrackedCache``): a registrar renewing ``backends:`` of
    one host, or a dead mark on another, leaves every other cached route alone. A flush,
    a feed that is down or has just reconnected empties the cache. A lookup in flight
    while one of its own keys changes does not store its (possibly older) answer: the
    router reads ``generation`` before looking up and hands it to ``put``.
    """

    def __init__(self, feed: InvalidationFeed, max_entries: int = STALE_ROUTES_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.feed = feed
        self.routes: TrackedCache[Route] = TrackedCache(max_entries)
        self.clock = clock

    @property
    def generation(self) -> int:
        return self.routes.generation

    def get(self, host: str) -> Route | None:
        self._sync()
        route = self.routes.get(host)
        if route is not None and route.expires != math.inf and route.expires <= self.clock():
            self.routes.drop(host)  # a registered backend expired: Redis knows better now
            return None
        return route

    def put(self, route: Route, generation: int) -> None:
        """Store ``route`` if none of its keys changed since ``generation`` (read before the lookup)."""
        self._sync()
        self.routes.put(route.host, route, dependencies(route), generation)

    def _sync(self) -> None:
        changes = self.feed.changed()
        if isinstance(changes, list):
            self.routes.changed(changes)
        elif changes:
            self.routes.clear()


class Router:
    """Resolves hosts through the store; serves last good routes while Redis is away.

    With a ``cache``, a host's route is served from memory until Redis says a routing
    key changed; requests that apply rate limits still go to Redis (the counters live
    there), for their limits only when the route is cached.
    """

    def __init__(self, store: RouteStore, stale_ttl: float,
                 clock: Callable[[], float] = time.monotonic, cache: RouteCache | None = None) -> None:
        self.store = store
        self.stale_ttl = stale_ttl
        self.clock = clock
        self.cache = cache
        self._last_good: BoundedCache[str, tuple[Route, float]] = BoundedCache(STALE_ROUTES_MAX)

    def resolve(self, host: str, limit_args: tuple[str, ...] | None = None) -> Route:
        """The host's route; with ``limit_args``, rate limits are applied in the same call.

        A cached route still needs Redis when limits apply (the counters live there): the
        limits are then decided alone, without reading the route again.
        """
        cache = self.cache
        if cache is not None:
            cached = cache.get(host)
            if cached is not None:
                self._remember(cached)  # still the last good route if Redis goes away now
                return cached if limit_args is None else self._limited(cached, limit_args)
            generation = cache.generation
        try:
            found = self.store.lookup(lookup_candidates(host), host, limit_args)
        except StoreError as exc:
            return self._stale_route(host, exc)
        if found is None:
            self._last_good.pop(host, None)
            raise UnknownHost(f"no frontend for {host!r}")
        expires_in = found[0].expires_in
        route = Route(host, found[0], found[1],
                      expires=math.inf if expires_in is None else self.clock() + expires_in)
        self._remember(route)
        if cache is not None:
            cache.put(route if found[1] is None else route.with_limit_answer(None), generation)
        return route

    def _limited(self, cached: Route, limit_args: tuple[str, ...]) -> Route:
        try:
            answer = self.store.limit(cached.frontend.key, limit_args)
        except StoreError as exc:
            return self._stale_route(cached.host, exc)
        return cached.with_limit_answer(answer)

    def _remember(self, route: Route) -> None:
        if self.stale_ttl > 0:
            self._last_good[route.host] = (route, self.clock())

    def _stale_route(self, host: str, error: StoreError) -> Route:
        remembered = self._last_good.get(host)
        if remembered and self.clock() - remembered[1] <= self.stale_ttl:
            log.warning("redis unreachable (%s); serving %s from its last good route", error, host)
            return Route(host, remembered[0].frontend, stale=True)
        log.error("redis unreachable (%s); cannot route %s", error, host)
        raise StoreUnavailable(f"routing store unreachable: {error}")
