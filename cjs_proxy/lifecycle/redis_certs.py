"""Certificates from Redis: ``tls:<servername>`` hashes offered by SNI, without a reload.

A handshake whose SNI name no configured certificate covers asks ``RedisCertificates``
(from ``tls.SniContexts``' ``sni_callback``): the exact name, then its one-label
wildcard (``tls:*.example.com``), in one round trip (``RouteStore.certificate``).

**Inside the handshake.** The ``sni_callback`` runs inside OpenSSL's ``SSL_do_handshake``,
on the stack of the greenlet handshaking. Under gevent a Redis call made there yields to
the hub like any other socket wait (greenlet switches C stacks as well as Python frames;
CPython's ``_ssl`` re-takes the GIL for the callback with ``PyGILState_Ensure``), so
the worker keeps serving its other connections while one handshake waits for Redis.
That was checked on its own (three lookups waiting 0.5 s each inside callbacks overlap,
other handshakes complete in 10 ms meanwhile) and is tested against the real worker
(``tests/functional/test_tls_redis.py``): no ClientHello parsing of our own is needed.

**What is cached, and for how long.** Answers are cached per name (bounded, least
recently used first): a certificate until Redis announces a change to a ``tls:`` key
(client-side tracking, an ``InvalidationFeed`` of its own, as the route cache does), "no
certificate" for ``NEGATIVE_TTL`` at most, so a flood of handshakes for unknown names
costs one Redis call per name and few seconds. While the feed is down nothing is
believed for longer than ``UNTRACKED_TTL``. Handshakes for a name already being looked
up wait for that one call. Contexts are built once per key and content (``*.example.com``
serves every subdomain with one context). When Redis fails, it is not asked again for
``RETRY_AFTER_ERROR``, and the last certificate read for the name (else the default
one) is served; a malformed hash gets the default certificate and one line naming the
key per ``eventlog.LOG_INTERVAL``.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from gevent.event import AsyncResult

from cjs_proxy.boundedcache import BoundedCache
from cjs_proxy.eventlog import EventLog
from cjs_proxy.exceptions import InvalidHost
from cjs_proxy.pipeline.invalidation import InvalidationFeed
from cjs_proxy.pipeline.router import normalize_host
from cjs_proxy.pipeline.store import StoreError

log = logging.getLogger("cjs_proxy.lifecycle.redis_certs")

#: Seconds a "no certificate in Redis" answer is believed (the feed clears it sooner on a write).
NEGATIVE_TTL = 5.0
#: Seconds any answer is believed while the invalidation feed is down (starting, Redis away).
UNTRACKED_TTL = 1.0
#: Seconds Redis is left alone after a failed lookup (a dead Redis must not slow every handshake).
RETRY_AFTER_ERROR = 1.0
#: Names (and, separately, keys' contexts) remembered at most per worker.
MAX_ENTRIES = 10_000

#: (key, PEM chain, PEM key) of the first name found, or None: ``RouteStore.certificate``.
Fetch = Callable[[list[str]], "tuple[str, bytes, bytes] | None"]
#: Builds a server context from a PEM chain and key (``tls.pem_context``); raises on bad PEM.
Build = Callable[[bytes, bytes], ssl.SSLContext]


def lookup_names(server_name: str) -> list[str] | None:
    """The ``tls:`` names to try for an SNI name: exact, then ``*.<rest>``; None if not a host name."""
    try:
        name = normalize_host(server_name)
    except InvalidHost:
        return None
    _head, dot, rest = name.partition(".")
    return [name, f"*.{rest}"] if dot and rest else [name]


@dataclass(frozen=True)
class Entry:
    """One name's answer: a context (None: the default certificate) and when Redis gave it."""

    context: ssl.SSLContext | None
    fetched_at: float


class RedisCertificates:
    """SNI names to contexts built from ``tls:`` hashes, per worker, kept current by a feed."""

    def __init__(self, fetch: Fetch, build: Build, feed: InvalidationFeed | None, wait_timeout: float,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTRIES) -> None:
        self.fetch = fetch
        self.build = build
        self.feed = feed
        #: How long a handshake waits for another one's lookup of the same name.
        self.wait_timeout = wait_timeout
        self.clock = clock
        self.entries: BoundedCache[str, Entry] = BoundedCache(max_entries)
        #: Contexts by key: the digest of the PEM they were built from, the context (None: malformed), why.
        self.contexts: BoundedCache[str, tuple[bytes, ssl.SSLContext | None, str]] = BoundedCache(max_entries)
        self.pending: dict[str, AsyncResult] = {}
        #: Moves on every clear, so a lookup in flight during a change does not store its answer.
        self.generation = 0
        self.tracked = False
        self.down_until = 0.0
        self.events = EventLog(log, clock)

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """The context for ``server_name`` from Redis, or None for the default certificate."""
        names = lookup_names(server_name)
        if names is None:
            return None
        self._sync()
        name = names[0]
        entry = self.entries.get(name)
        if entry is not None and self._fresh(entry):
            return entry.context
        pending = self.pending.get(name)
        if pending is not None:  # another handshake is asking Redis already: share its answer
            return pending.wait(self.wait_timeout)
        return self._lookup(names, entry)

    def _sync(self) -> None:
        """Forget every answer when a ``tls:`` key changed, or when tracking (re)starts:
        answers read while it was down may have missed a change."""
        if self.feed is None:
            return
        changed = self.feed.changed()
        connected = self.feed.connected
        if connected and (changed or not self.tracked):
            self.entries.clear()
            self.generation += 1
        self.tracked = connected

    def _fresh(self, entry: Entry) -> bool:
        age = self.clock() - entry.fetched_at
        if not self.tracked:
            return age < UNTRACKED_TTL
        return entry.context is not None or age < NEGATIVE_TTL

    def _lookup(self, names: list[str], stale: Entry | None) -> ssl.SSLContext | None:
        """Ask Redis once for ``names`` (the others asking meanwhile wait for this answer)."""
        fallback = stale.context if stale is not None else None
        if self.clock() < self.down_until:
            return fallback
        name = names[0]
        result = self.pending[name] = AsyncResult()
        context = fallback
        try:
            context = self._fetch(names, fallback)
        finally:
            del self.pending[name]
            result.set(context)
        return context

    def _fetch(self, names: list[str], fallback: ssl.SSLContext | None) -> ssl.SSLContext | None:
        generation = self.generation
        try:
            found = self.fetch(names)
        except StoreError as exc:
            self.down_until = self.clock() + RETRY_AFTER_ERROR
            serving = "its last certificate read" if fallback is not None else "the default certificate"
            self.events.record("redis", f"certificates from redis: redis unreachable ({exc}); "
                                        f"{names[0]} gets {serving}")
            return fallback
        context = None if found is None else self._context(*found)
        if generation == self.generation:
            self.entries[names[0]] = Entry(context, self.clock())
        return context

    def _context(self, key: str, chain: bytes, private_key: bytes) -> ssl.SSLContext | None:
        """The context of ``key``, built once per content; None (and a log line) when malformed."""
        digest = hashlib.sha256(chain + b"\0" + private_key).digest()
        built = self.contexts.get(key)
        if built is None or built[0] != digest:
            built = self.contexts[key] = (digest, *self._build(chain, private_key))
        _digest, context, problem = built
        if context is None:
            self.events.record(f"malformed:{key}", f"certificates from redis: {key} is not a usable "
                                                   f"certificate and key ({problem}); the default certificate answers")
        return context

    def _build(self, chain: bytes, private_key: bytes) -> tuple[ssl.SSLContext | None, str]:
        """(context, "") or (None, why not)."""
        if not chain or not private_key:
            return None, "no certificate field" if not chain else "no key field"
        try:
            return self.build(chain, private_key), ""
        except (ssl.SSLError, ValueError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
