"""Balancing policies: which of a frontend's live backends gets the next request.

``passive_health.choose_backend`` decides *which* backends may be chosen (live, not
tried yet, or all of them in panic mode); a policy here only picks among those, so dead
marks, panic mode and retries work the same under every policy.

The policy is ``balance:<host>`` (read with the route, in the same Redis call), else
``server.balance``: ``random`` (Hipache's), ``roundrobin``, ``leastconn`` (fewest
requests in flight from this worker), ``p2c`` (the less busy of two random picks) or
``sticky`` (a cookie naming the backend, opaquely). ``weights:<host>`` (URL -> positive
integer, default 1) weighs ``random``, ``roundrobin`` and ``p2c``. Bad values in Redis
fall back to the defaults, with one rate-limited log line naming the key.

An unweighted ``random`` frontend (Hipache's, the default) costs a few attribute checks
here and nothing else: ``Balancer.picker`` answers None (the old uniform choice runs),
``hold`` counts nothing and ``cookie_headers`` answers an empty tuple.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cjs_proxy.boundedcache import BoundedCache
from cjs_proxy.eventlog import EventLog

if TYPE_CHECKING:
    from cjs_proxy.pipeline.passive_health import Backend
    from cjs_proxy.pipeline.router import Route

log = logging.getLogger("cjs_proxy.pipeline.balance")

POLICIES = ("random", "roundrobin", "leastconn", "p2c", "sticky")
#: Policies that need this worker's count of requests in flight per backend.
COUNTING = frozenset({"leastconn", "p2c"})
#: Frontends whose round-robin position (and backends whose sticky id) a worker keeps.
STATE_MAX = 10_000
#: Hex characters of a sticky cookie's value.
STICKY_ID_CHARS = 16

Picker = Callable[[Sequence["Backend"]], "Backend"]


# ----------------------------------------------------------------- pure policies


def weighted_index(weights: Sequence[int], point: int) -> int:
    """The index whose cumulative weight range holds ``point`` (0 <= point < sum(weights))."""
    for index, weight in enumerate(weights):
        if point < weight:
            return index
        point -= weight
    raise ValueError("point beyond the total weight")


def pick_random(count: int, weights: Sequence[int] | None, rng: random.Random) -> int:
    if weights is None:
        return rng.randrange(count)
    return weighted_index(weights, rng.randrange(sum(weights)))


def pick_roundrobin(count: int, weights: Sequence[int] | None, turn: int) -> int:
    """The ``turn``-th pick of a cycle where each backend comes up ``weight`` times."""
    if weights is None:
        return turn % count
    return weighted_index(weights, turn % sum(weights))


def pick_leastconn(in_flight: Sequence[int], rng: random.Random) -> int:
    """The backend with the fewest requests in flight; ties broken at random."""
    fewest = min(in_flight)
    tied = [i for i, n in enumerate(in_flight) if n == fewest]
    return tied[rng.randrange(len(tied))] if len(tied) > 1 else tied[0]


def pick_p2c(in_flight: Sequence[int], weights: Sequence[int] | None, rng: random.Random) -> int:
    """Power of two choices: two distinct (weighted) random picks, the less loaded per weight wins."""
    count = len(in_flight)
    first = pick_random(count, weights, rng)
    second = pick_random(count - 1, None if weights is None else [w for i, w in enumerate(weights) if i != first],
                         rng)
    second += second >= first  # skip ``first``
    weight_of = (lambda i: weights[i]) if weights is not None else (lambda i: 1)
    return min((first, second), key=lambda i: in_flight[i] / weight_of(i))


def sticky_id(url: str, secret: bytes) -> str:
    """The cookie value for a backend: a keyed hash of its URL, never the URL itself."""
    return hmac.new(secret, url.encode(), hashlib.sha256).hexdigest()[:STICKY_ID_CHARS]


def cookie_value(cookie_header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, without parsing the others."""
    for part in cookie_header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip('"')
    return None


# ------------------------------------------------------------- one worker's state


class Balancer:
    """A worker's policies: the default, the round-robin turns, requests in flight, sticky ids."""

    def __init__(self, default: str = "random", cookie: str = "cjs_backend", secret: bytes = b"",
                 rng: random.Random | None = None) -> None:
        self.default = default
        self.cookie = cookie
        self.secret = secret or b"cjs-proxy sticky"
        self.rng = rng or random.Random()
        self.events = EventLog(log)
        self.turns: BoundedCache[str, int] = BoundedCache(STATE_MAX)
        self.in_flight: dict[str, int] = {}
        self.ids: BoundedCache[str, str] = BoundedCache(STATE_MAX)

    def policy(self, route: Route) -> str:
        """``balance:<host>``, else the default; an unknown name is logged and ignored."""
        wanted = route.frontend.balance
        if not wanted:
            return self.default
        if wanted in POLICIES:
            return wanted
        self.events.record(f"balance:{route.frontend.key}",
                           f"balance:{route.frontend.key}: unknown policy {wanted[:40]!a}; "
                           f"using {self.default}")
        return self.default

    def picker(self, route: Route, environ: dict[str, Any]) -> Picker | None:
        """How to pick among ``route``'s candidates; None for unweighted random (the caller's own)."""
        frontend = route.frontend
        if not frontend.balance and not frontend.weights and self.default == "random":
            return None
        policy = self.policy(route)
        if policy == "random" and not frontend.weights:
            return None
        cookie = None
        if policy == "sticky":
            cookie = cookie_value(environ.get("HTTP_COOKIE", ""), self.cookie)
        return functools.partial(self.pick, route, policy, cookie)

    def pick(self, route: Route, policy: str, cookie: str | None, candidates: Sequence[Backend]) -> Backend:
        weights = self.weights(route, candidates)
        count = len(candidates)
        if policy == "roundrobin":
            turn = self.turns.get(route.frontend.key, 0)
            self.turns[route.frontend.key] = turn + 1
            return candidates[pick_roundrobin(count, weights, turn)]
        if policy == "leastconn":
            return candidates[pick_leastconn([self.in_flight.get(b.url, 0) for b in candidates], self.rng)]
        if policy == "p2c":
            return candidates[pick_p2c([self.in_flight.get(b.url, 0) for b in candidates], weights, self.rng)]
        if policy == "sticky" and cookie:
            for backend in candidates:
                if self.sticky_id(backend.url) == cookie:
                    return backend
        return candidates[pick_random(count, weights, self.rng)]

    def weights(self, route: Route, candidates: Sequence[Backend]) -> list[int] | None:
        """The candidates' weights (1 unless set); None when all are 1. Bad values count as 1."""
        stored = route.frontend.weights
        if not stored:
            return None
        weights = []
        for backend in candidates:
            raw = stored.get(backend.url)
            weight = int(raw) if raw is not None and raw.isdigit() else 1
            if raw is not None and (not raw.isdigit() or weight < 1):
                weight = 1
                self.events.record(f"weights:{route.frontend.key}",
                                   f"weights:{route.frontend.key}: weight {raw[:20]!a} of "
                                   f"{backend.url[:100]!a} is not a positive integer; using 1")
            weights.append(weight)
        return weights if any(w != 1 for w in weights) else None

    # ------------------------------------------------------------------ sticky

    def sticky_id(self, url: str) -> str:
        known = self.ids.get(url)
        if known is None:
            known = self.ids[url] = sticky_id(url, self.secret)
        return known

    def cookie_headers(self, route: Route, backend: Backend, environ: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """``Set-Cookie`` naming ``backend`` when the frontend is sticky and the client's cookie does not
        (an empty tuple otherwise: nothing allocated on the default path)."""
        if not (route.frontend.balance or self.default == "sticky") or self.policy(route) != "sticky":
            return ()
        wanted = self.sticky_id(backend.url)
        if cookie_value(environ.get("HTTP_COOKIE", ""), self.cookie) == wanted:
            return ()
        return (("Set-Cookie", f"{self.cookie}={wanted}; Path=/; HttpOnly; SameSite=Lax"),)

    # ------------------------------------------------------------- in flight

    def hold(self, route: Route, url: str) -> bool:
        """Count a request to ``url`` in flight, when the frontend's policy needs it."""
        if not (route.frontend.balance or self.default in COUNTING) or self.policy(route) not in COUNTING:
            return False
        self.in_flight[url] = self.in_flight.get(url, 0) + 1
        return True

    def release(self, url: str) -> None:
        left = self.in_flight.get(url, 0) - 1
        if left > 0:
            self.in_flight[url] = left
        else:
            self.in_flight.pop(url, None)
