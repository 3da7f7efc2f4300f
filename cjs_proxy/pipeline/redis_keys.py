"""Hipache's names in Redis, in one place: keys, the driver's prefix, the ``dead`` channel.

Every module that touches Redis (the request path in ``store``, the route cache's
``invalidation`` feed, the Lua scripts through their arguments, the operator's
``admin.store``) takes its names from here, so a Hipache deployment's data stays
readable by both and a rename is one edit.

Keys, after the driver's ``#prefix``: ``frontend:<host>`` is a list ``[identifier,
backend_url, ...]``; ``dead:<host>`` a set of dead backend ids (0-based positions
after the identifier), keyed by the *requested* host; ``tier:<host>`` the frontend's
rate-limit tier; ``rl:...`` the rate limiter's counters; ``tls:<servername>`` a hash
with fields ``certificate`` (PEM chain) and ``key`` (PEM), wildcards as
``tls:*.example.com`` (PlanB's schema, so its tooling can write them). ``hchecker_ping`` is not
prefixed (as in Hipache): the unix time of an external checker's last round.

Ours, beside Hipache's (never inside its keys, so its indexes never shift):
``backends:<host>`` a sorted set of self-registered backend URLs scored by their
expiry (unix milliseconds, Redis' clock); ``identifier:<host>`` the identifier of a
frontend made of registered backends only; ``deadurls:<host>`` the registered
backends marked dead, by URL (their positions are not stable), keyed like ``dead:``;
``balance:<host>`` the frontend's balancing policy; ``weights:<host>`` a hash from
backend URL to weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

FRONTEND = "frontend:"
DEAD = "dead:"
TIER = "tier:"
#: The rate limiter's counters (``rl:tier:...``, ``rl:ip:...``, ``rl:gip:...``, see ``lua/route.lua``).
COUNTERS = "rl:"
BACKENDS = "backends:"
IDENTIFIER = "identifier:"
DEAD_URLS = "deadurls:"
BALANCE = "balance:"
WEIGHTS = "weights:"
#: Key prefixes whose changes invalidate cached routes.
ROUTING = (FRONTEND, DEAD, TIER, BACKENDS, IDENTIFIER, DEAD_URLS, BALANCE, WEIGHTS)
#: What ``lua/route.lua`` reads besides the frontend lists and ``dead:``, in its ARGV order.
ROUTE_PREFIXES = (FRONTEND, DEAD, BACKENDS, IDENTIFIER, DEAD_URLS, BALANCE, WEIGHTS)
#: Certificates offered by SNI: a hash per server name (PlanB's ``tls:<servername>``).
TLS = "tls:"
#: The two fields of a ``tls:`` hash.
TLS_CERTIFICATE_FIELD = "certificate"
TLS_KEY_FIELD = "key"

DEAD_CHANNEL = "dead"
CHECKER_PING_KEY = "hchecker_ping"
#: An ``hchecker_ping`` older than this means the external checker is gone (Hipache: 30 s).
CHECKER_PING_FRESH = 30


def split_driver_url(url: str) -> tuple[str, str]:
    """Hipache's driver URL to (redis-py URL, key prefix); ``redis:`` alone means localhost."""
    parts = urlsplit(url)
    prefix = parts.fragment
    netloc = parts.netloc
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        netloc = (netloc.rstrip("@") + "@" if "@" in netloc else "") + "127.0.0.1:6379"
    if parts.scheme == "unix":  # urlunsplit would give "unix:/path", which redis-py refuses
        return f"unix://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else ""), prefix
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), prefix


def dead_message(host: str, backend_id: int, backend_url: str, backend_count: int) -> str:
    """Hipache's announcement on channel ``dead``: ``<host>;<backend_url>;<id>;<backend_count>``."""
    return f"{host};{backend_url};{backend_id};{backend_count}"


@dataclass(frozen=True)
class KeySpace:
    """The key names under one driver's ``#prefix``."""

    prefix: str = ""

    def frontend(self, host: str) -> str:
        return f"{self.prefix}{FRONTEND}{host}"

    def dead(self, host: str) -> str:
        return f"{self.prefix}{DEAD}{host}"

    def tier(self, host: str) -> str:
        return f"{self.prefix}{TIER}{host}"

    def backends(self, host: str) -> str:
        return f"{self.prefix}{BACKENDS}{host}"

    def identifier(self, host: str) -> str:
        return f"{self.prefix}{IDENTIFIER}{host}"

    def dead_urls(self, host: str) -> str:
        return f"{self.prefix}{DEAD_URLS}{host}"

    def balance(self, host: str) -> str:
        return f"{self.prefix}{BALANCE}{host}"

    def weights(self, host: str) -> str:
        return f"{self.prefix}{WEIGHTS}{host}"

    def counters(self, name: str) -> str:
        """A rate-limit counter (``lua/route.lua`` names them under this prefix)."""
        return f"{self.prefix}{COUNTERS}{name}"

    def tls(self, server_name: str) -> str:
        """The certificate hash of ``server_name`` (``*.example.com`` for a wildcard)."""
        return f"{self.prefix}{TLS}{server_name}"

    def name_of_tls(self, key: str) -> str:
        """``tls:<servername>`` (prefixed) back to ``<servername>``."""
        return key[len(self.prefix) + len(TLS):]

    def host_of_frontend(self, key: str) -> str:
        """``frontend:<host>`` (prefixed) back to ``<host>``."""
        return key[len(self.prefix) + len(FRONTEND):]

    def host_of(self, key: str, name: str) -> str:
        """``<name><host>`` (prefixed, ``name`` one of the prefixes above) back to ``<host>``."""
        return key[len(self.prefix) + len(name):]

    def route_prefixes(self) -> tuple[str, ...]:
        """``ROUTE_PREFIXES``, prefixed: the route script's first arguments."""
        return tuple(f"{self.prefix}{name}" for name in ROUTE_PREFIXES)

    def routing_prefixes(self) -> list[str]:
        """The prefixed ``ROUTING`` names: what a cached route depends on."""
        return [f"{self.prefix}{name}" for name in ROUTING]
