"""The request path's Redis: route lookups and passive dead marks, one round trip each.

A lookup is one EVALSHA of ``lua/route.lua``: the first candidate with a non-empty
``frontend:`` list or live registered backends (``backends:``), its dead marks, balancing
policy and weights, plus the rate limiter's decision when it asks: its arguments and its
answer are ``ratelimit``'s, passed through unread. For a route the worker has cached,
``lua/limit.lua`` makes the same decision alone. In a worker, limited calls of one loop
turn share their round trip (``coalesce``).
A dead mark is one EVALSHA of ``lua/mark_dead.lua`` on the write URL. A TLS handshake for
a name no configured certificate covers reads ``tls:<name>`` and its one-label wildcard
in one pipelined round trip (``certificate``). Key names come
from ``redis_keys``; the operator's writes and scans are ``cjs_proxy.admin.store``'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from cjs_proxy.pipeline.coalesce import ScriptBatcher
from cjs_proxy.pipeline.redis_keys import (
    CHECKER_PING_FRESH,
    CHECKER_PING_KEY,
    DEAD_CHANNEL,
    TLS_CERTIFICATE_FIELD,
    TLS_KEY_FIELD,
    KeySpace,
    dead_message,
    split_driver_url,
)
from cjs_proxy.pipeline.sentinel import sentinel_client
from cjs_proxy.pipeline.sentinel_url import is_sentinel_url, parse_sentinel_url

LUA_DIR = Path(__file__).resolve().parent / "lua"


class StoreError(Exception):
    """Redis could not answer (unreachable, timed out, or refused the command)."""


_NO_WEIGHTS: dict[str, str] = {}


@dataclass(frozen=True)
class Frontend:
    """What Redis holds for a host: the matching key, its backends, and which are dead.

    ``backends`` is the static list (``frontend:``, Hipache's ids 0..static_count-1)
    followed by the live registered backends not already in it: their ids only hold for
    this lookup, so their dead marks are kept by URL (``deadurls:``) and turned into ids
    here, and every policy and health check can treat both kinds alike.
    """

    key: str
    identifier: str
    backends: tuple[str, ...]
    dead: frozenset[int]
    static_count: int = -1
    #: Seconds until the first registered backend expires (None: no registered backend).
    expires_in: float | None = None
    #: ``balance:<key>`` as stored ('' when unset) and ``weights:<key>`` unparsed.
    balance: str = ""
    weights: dict[str, str] = field(default_factory=lambda: _NO_WEIGHTS)

    def __post_init__(self) -> None:
        if self.static_count < 0:
            object.__setattr__(self, "static_count", len(self.backends))

    def is_registered(self, backend_id: int) -> bool:
        return backend_id >= self.static_count


def decode_frontend(key: str, values: list[bytes], dead_ids: list[bytes], routing: list[Any]) -> Frontend:
    """A ``Frontend`` from ``lua/route.lua``'s answer (see there for the shape of ``routing``)."""
    listed = [v.decode("utf-8", "replace") for v in values]
    static = tuple(listed[1:])
    dead = {int(d) for d in dead_ids if d.isdigit()}
    registered_urls, first_expiry, dead_urls, balance, weights = routing
    if not registered_urls and not weights and not balance:  # Hipache's frontend: no more work
        return Frontend(key, listed[0], static, frozenset(dead))
    backends = list(static)
    if registered_urls:
        marked = {u.decode("utf-8", "replace") for u in dead_urls}
        for raw in registered_urls:
            url = raw.decode("utf-8", "replace")
            if url not in static:
                if url in marked:
                    dead.add(len(backends))
                backends.append(url)
    pairs = [w.decode("utf-8", "replace") for w in weights]
    return Frontend(key, listed[0], tuple(backends), frozenset(dead), len(static),
                    int(first_expiry) / 1000 if int(first_expiry) >= 0 else None,
                    balance.decode("utf-8", "replace"), dict(zip(pairs[::2], pairs[1::2], strict=True)))


#: The rate limiter's verdict as ``lua/route.lua`` returns it; only ``ratelimit`` reads it.
LimitAnswer = list[Any]


class LuaScript:
    """A script from ``lua/``, called by EVALSHA and loaded again on NOSCRIPT.

    Several files make one script, in order (``limits.lua`` defines what ``route.lua``
    and ``limit.lua`` call: Redis scripts cannot include one another). redis-py's own
    ``Script`` checks ``SCRIPT EXISTS`` inside pipelines; calling EVALSHA directly keeps
    the hot path at one round trip.
    """

    def __init__(self, *paths: Path) -> None:
        self.source = "\n".join(path.read_text(encoding="utf-8") for path in paths)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: list[str], args: tuple = ()) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def connect(url: str, timeout: float, max_connections: int,
            for_reads: bool = False) -> tuple[redis.Redis, str]:
    """A client with a bounded, blocking pool (one connection per concurrent request otherwise).

    A ``redis+sentinel://`` URL gives a client that follows the master through Sentinel
    (a replica's, for reads, with ``?replicas=true``): see ``sentinel``.
    """
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        return sentinel_client(target, timeout, max_connections, for_reads), target.prefix
    redis_url, prefix = split_driver_url(url)
    pool = redis.BlockingConnectionPool.from_url(
        redis_url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool), prefix


def reads_from_replicas(url: str) -> bool:
    """A sentinel URL with ``?replicas=true``: its reads and writes need two clients."""
    return is_sentinel_url(url) and parse_sentinel_url(url).replicas


def connect_pair(read_url: str, write_url: str, timeout: float,
                 max_connections: int) -> tuple[redis.Redis, redis.Redis, str]:
    """(reader, writer, prefix) for Hipache's read/write driver pair; one client when they are the same.

    Writes always go to a master: a ``?replicas=true`` URL gives a replica's client for
    reads and the master's for writes.
    """
    reader, prefix = connect(read_url, timeout, max_connections, for_reads=True)
    if write_url == read_url and not reads_from_replicas(read_url):
        return reader, reader, prefix
    return reader, connect(write_url, timeout, max_connections)[0], prefix


class RouteStore:
    """What a request needs from Redis: its route (with its limits) and, on failure, a dead mark."""

    def __init__(self, reader: redis.Redis, writer: redis.Redis, prefix: str = "",
                 coalesce: bool = False) -> None:
        self.reader = reader
        self.writer = writer
        self.keys = KeySpace(prefix)
        self._route_script = LuaScript(LUA_DIR / "limits.lua", LUA_DIR / "route.lua")
        self._limit_script = LuaScript(LUA_DIR / "limits.lua", LUA_DIR / "limit.lua")
        #: With ``coalesce`` (a gevent worker), limited calls of one loop turn share a round trip.
        self.coalesce = coalesce
        self._batched = {script.sha: ScriptBatcher(writer, script.sha, script.source)
                         for script in (self._route_script, self._limit_script)} if coalesce else {}
        self._mark_script = LuaScript(LUA_DIR / "mark_dead.lua")
        #: The route script's first arguments: where to find what a route is made of.
        self._route_args = self.keys.route_prefixes()
        #: Where to find tiers and keep counters: the next arguments when it applies limits
        #: (``limit.lua`` takes them after the frontend's key).
        self._counter_prefixes = (self.keys.tier(""), self.keys.counters(""))
        self._limit_key_prefixes = (*self._route_args, *self._counter_prefixes)

    @classmethod
    def from_urls(cls, read_url: str, write_url: str, timeout: float,
                  max_connections: int, coalesce: bool = False) -> RouteStore:
        return cls(*connect_pair(read_url, write_url, timeout, max_connections), coalesce=coalesce)

    def lookup(self, candidates: list[str], host: str,
               limit_args: tuple[str, ...] | None = None) -> tuple[Frontend, LimitAnswer | None] | None:
        """The first candidate with a non-empty frontend list or live registered backends.

        With ``limit_args`` (the limiter's, see ``lua/route.lua``) the same call applies
        the rate limits and also returns their verdict; it then runs on the write
        connection, since it updates counters.
        """
        keys = [self.keys.frontend(c) for c in candidates]
        keys.append(self.keys.dead(host))
        if limit_args is None:
            client, args = self.reader, self._route_args
        else:
            client, args = self.writer, (*self._limit_key_prefixes, *limit_args)
        reply = self._call(self._route_script, client, keys, args, batched=limit_args is not None)
        position = int(reply[0])
        if position == 0:
            return None
        frontend = decode_frontend(candidates[position - 1], reply[1], reply[2], reply[4])
        return frontend, (reply[3] if limit_args is not None else None)

    def limit(self, frontend_key: str, limit_args: tuple[str, ...]) -> LimitAnswer:
        """The rate limiter's verdict alone, for a route the worker holds already (its cache).

        ``frontend_key`` is the route's ``Frontend.key``: limits count per frontend.
        """
        args = (frontend_key, *self._counter_prefixes, *limit_args)
        return self._call(self._limit_script, self.writer, [], args, batched=True)

    def batch_counts(self) -> tuple[int, int]:
        """(batches sent, script calls they carried) since start: how much coalescing shares."""
        return (sum(b.batches for b in self._batched.values()), sum(b.calls for b in self._batched.values()))

    def _call(self, script: LuaScript, client: redis.Redis, keys: list[str], args: tuple,
              batched: bool) -> Any:
        """One script call; in a batch with the loop turn's others when it writes and may."""
        batcher = self._batched.get(script.sha) if batched else None
        try:
            return batcher(keys, args) if batcher is not None else script(client, keys, args)
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def mark_dead(self, host: str, backend_id: int, backend_url: str, backend_count: int,
                  ttl: int) -> bool:
        """Hipache's mark: SADD + EXPIRE ``dead:<host>`` and PUBLISH on ``dead``.

        Returns False when an external checker is alive, which owns the dead sets then.
        """
        message = dead_message(host, backend_id, backend_url, backend_count)
        keys = [self.keys.dead(host), CHECKER_PING_KEY]
        try:
            written = self._mark_script(self.writer, keys,
                                        (backend_id, ttl, DEAD_CHANNEL, message, CHECKER_PING_FRESH))
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        return bool(written)

    def certificate(self, names: list[str]) -> tuple[str, bytes, bytes] | None:
        """The first of ``names`` that has a ``tls:`` hash: (key name, PEM chain, PEM key).

        One round trip for all the names (the exact name and its wildcard), read-only. A
        hash missing a field is returned with that field empty: the caller reports it as
        malformed, naming the key, rather than silently trying the next name.
        """
        keys = [self.keys.tls(name) for name in names]
        try:
            with self.reader.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, TLS_CERTIFICATE_FIELD, TLS_KEY_FIELD)
                replies = pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        for key, (chain, private_key) in zip(keys, replies, strict=True):
            if chain or private_key:
                return key, chain or b"", private_key or b""
        return None

    def mark_dead_url(self, host: str, backend_url: str, ttl: int) -> None:
        """A registered backend's mark: SADD + EXPIRE ``deadurls:<host>``, by URL.

        Not published on ``dead`` (Hipache's tools read its id as an index into
        ``frontend:``), and written even while an external checker is alive: Hipache's
        checker does not know registered backends (ours rewrites the set every round).
        """
        key = self.keys.dead_urls(host)
        try:
            with self.writer.pipeline(transaction=True) as pipe:
                pipe.sadd(key, backend_url)
                pipe.expire(key, ttl)
                pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        for batcher in self._batched.values():
            batcher.close()
        self.reader.close()
        if self.writer is not self.reader:
            self.writer.close()
