"""The Redis side of routing: the only module that knows Hipache's key names.

Keys (after the driver's ``#prefix``): ``frontend:<host>`` is a list
``[identifier, backend_url, ...]``; ``dead:<host>`` is a set of dead backend ids
(0-based positions after the identifier). A lookup is one EVALSHA of ``lua/route.lua``.
Dead marks go to the write URL, with a message on channel ``dead``; ``hchecker_ping``
(unprefixed, as in Hipache) holds the unix time of an external checker's last round.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
import redis

from cjs_proxy.pipeline.sockets import readable_now

log = logging.getLogger("cjs_proxy.pipeline.store")

LUA_DIR = Path(__file__).resolve().parent / "lua"
DEAD_CHANNEL = "dead"
CHECKER_PING_KEY = "hchecker_ping"
#: An ``hchecker_ping`` older than this means the external checker is gone (Hipache: 30 s).
CHECKER_PING_FRESH = 30


class StoreError(Exception):
    """Redis could not answer (unreachable, timed out, or refused the command)."""


@dataclass(frozen=True)
class Frontend:
    """What Redis holds for a host: the matching key and the raw list, plus dead ids."""

    key: str
    identifier: str
    backends: tuple[str, ...]
    dead: frozenset[int]


@dataclass(frozen=True)
class LimitVerdict:
    """The rate limiter's answer for one request, decided in the route lookup's script.

    ``policy`` names the binding limit (the tier, ``ip`` or ``global-ip``): the one that
    refused, or the one with the fewest requests left; ``quota``/``window`` describe it
    (``burst`` requests, refilled in ``window`` seconds), ``remaining`` and ``reset``
    (seconds) its state after this request.
    """

    tier: str
    allowed: bool
    shadow_limited: bool
    policy: str
    quota: int
    window: int
    remaining: int
    reset: int
    retry_after_ms: int
    tier_known: bool


class LuaScript:
    """A script from ``lua/``, called by EVALSHA and loaded again on NOSCRIPT.

    redis-py's own ``Script`` checks ``SCRIPT EXISTS`` inside pipelines; calling
    EVALSHA directly keeps the hot path at one round trip.
    """

    def __init__(self, name: str) -> None:
        self.source = (LUA_DIR / name).read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: list[str], args: tuple = ()) -> object:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


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


def connect(url: str, timeout: float, max_connections: int) -> tuple[redis.Redis, str]:
    """A client with a bounded, blocking pool (one connection per concurrent request otherwise)."""
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


def dead_message(host: str, backend_id: int, backend_url: str, backend_count: int) -> str:
    """Hipache's announcement on channel ``dead``: ``<host>;<backend_url>;<id>;<backend_count>``."""
    return f"{host};{backend_url};{backend_id};{backend_count}"


def _limit_verdict(reply: list) -> LimitVerdict:
    tier, verdict, policy, quota, window, remaining, reset, retry_ms, known = reply
    return LimitVerdict(
        tier=tier.decode(), allowed=int(verdict) != 0, shadow_limited=int(verdict) == 2,
        policy=policy.decode() if isinstance(policy, bytes) else str(policy),
        quota=int(quota), window=int(window), remaining=int(remaining), reset=int(reset),
        retry_after_ms=int(retry_ms), tier_known=bool(int(known)))


class RouteStore:
    """Frontends, dead sets and tiers in Redis: the proxy's reads, dead marks and the checker's writes."""

    def __init__(self, reader: redis.Redis, writer: redis.Redis, prefix: str = "") -> None:
        self.reader = reader
        self.writer = writer
        self.prefix = prefix
        self._route_script = LuaScript("route.lua")
        self._mark_script = LuaScript("mark_dead.lua")
        self._set_dead_script = LuaScript("set_dead.lua")

    @classmethod
    def from_urls(cls, read_url: str, write_url: str, timeout: float,
                  max_connections: int) -> RouteStore:
        reader, prefix = connect(read_url, timeout, max_connections)
        writer = reader if write_url == read_url else connect(write_url, timeout, max_connections)[0]
        return cls(reader, writer, prefix)

    def frontend_key(self, host: str) -> str:
        return f"{self.prefix}frontend:{host}"

    def dead_key(self, host: str) -> str:
        return f"{self.prefix}dead:{host}"

    def lookup(self, candidates: list[str], host: str,
               limit_args: tuple[str, ...] | None = None) -> tuple[Frontend, LimitVerdict | None] | None:
        """The first candidate with a non-empty frontend list, with ``dead:<host>``.

        With ``limit_args`` (see ``lua/route.lua``) the same call applies the rate
        limits; it then runs on the write connection, since it updates counters.
        """
        keys = [self.frontend_key(c) for c in candidates]
        keys.append(self.dead_key(host))
        args = ("1", self.prefix, *limit_args) if limit_args is not None else ("0",)
        client = self.writer if limit_args is not None else self.reader
        try:
            reply = self._route_script(client, keys, args)
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        position = int(reply[0])
        if position == 0:
            return None
        values = [v.decode("utf-8", "replace") for v in reply[1]]
        dead = frozenset(int(d) for d in reply[2] if d.isdigit())
        frontend = Frontend(candidates[position - 1], values[0], tuple(values[1:]), dead)
        return frontend, (_limit_verdict(reply[3:]) if limit_args is not None else None)

    def mark_dead(self, host: str, backend_id: int, backend_url: str, backend_count: int,
                  ttl: int) -> bool:
        """Hipache's mark: SADD + EXPIRE ``dead:<host>`` and PUBLISH on ``dead``.

        Returns False when an external checker is alive, which owns the dead sets then.
        """
        message = dead_message(host, backend_id, backend_url, backend_count)
        keys = [self.dead_key(host), CHECKER_PING_KEY]
        try:
            written = self._mark_script(self.writer, keys,
                                        (backend_id, ttl, DEAD_CHANNEL, message, CHECKER_PING_FRESH))
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        return bool(written)

    # Active health checks (``cjs-proxy health-check``).

    def checker_ping(self, now: int) -> None:
        self.writer.set(CHECKER_PING_KEY, now)

    def set_dead(self, dead_by_host: dict[str, set[int]], ttl: int) -> None:
        """Replace each ``dead:<host>`` with the checker's view (TTL-bound, in case it dies).

        One atomic script call per host (a proxy never reads a half-written set),
        pipelined in batches of 500.
        """
        script = self._set_dead_script
        self.writer.script_load(script.source)
        hosts = list(dead_by_host)
        for start in range(0, len(hosts), 500):
            with self.writer.pipeline(transaction=False) as pipe:
                for host in hosts[start:start + 500]:
                    pipe.evalsha(script.sha, 1, self.dead_key(host), ttl, *sorted(dead_by_host[host]))
                pipe.execute()

    def publish_dead(self, host: str, backend_id: int, backend_url: str, backend_count: int) -> None:
        self.writer.publish(DEAD_CHANNEL, dead_message(host, backend_id, backend_url, backend_count))

    def all_frontends(self) -> dict[str, list[str]]:
        """Every ``frontend:`` list (for the checker), read in pipelined batches."""
        hosts = self.frontend_hosts()
        result: dict[str, list[str]] = {}
        for start in range(0, len(hosts), 500):
            batch = hosts[start:start + 500]
            with self.reader.pipeline(transaction=False) as pipe:
                for host in batch:
                    pipe.lrange(self.frontend_key(host), 0, -1)
                for host, values in zip(batch, pipe.execute(), strict=True):
                    if values:
                        result[host] = [v.decode("utf-8", "replace") for v in values]
        return result

    # Administration (the CLI); the proxy itself only reads.

    def set_frontend(self, host: str, identifier: str, backends: list[str]) -> None:
        """Replace ``frontend:<host>`` atomically and clear its dead marks (ids change)."""
        key = self.frontend_key(host)
        with self.writer.pipeline(transaction=True) as pipe:
            pipe.delete(key, self.dead_key(host))
            pipe.rpush(key, identifier, *backends)
            pipe.execute()

    def get_frontend(self, host: str) -> tuple[list[str], set[int]]:
        with self.reader.pipeline(transaction=True) as pipe:
            pipe.lrange(self.frontend_key(host), 0, -1)
            pipe.smembers(self.dead_key(host))
            values, dead = pipe.execute()
        return [v.decode() for v in values], {int(d) for d in dead if d.isdigit()}

    def delete_frontend(self, host: str) -> bool:
        return bool(self.writer.delete(self.frontend_key(host), self.dead_key(host)))

    def frontend_hosts(self) -> list[str]:
        pattern = self.frontend_key("*")
        start = len(self.frontend_key(""))
        return sorted(k.decode()[start:] for k in self.reader.scan_iter(match=pattern, count=1000))

    def close(self) -> None:
        self.reader.close()
        if self.writer is not self.reader:
            self.writer.close()


#: Key prefixes whose changes invalidate cached routes.
TRACKED = ("frontend:", "dead:", "tier:")


class InvalidationFeed:
    """Tells whether any routing key changed, using Redis client-side tracking (Redis 6+).

    One connection is subscribed to ``__redis__:invalidate``; a second one turns on
    ``CLIENT TRACKING ... BCAST`` for the ``frontend:``, ``dead:`` and ``tier:`` prefixes
    with its messages redirected to the first. Redis then announces every change to those
    keys, by anyone, on the first connection. ``changed()`` only checks, without blocking,
    whether anything arrived: the content does not matter, any change empties the cache.
    While the feed is down (starting, Redis restarting, Redis < 6) ``changed()`` answers
    True, so nothing is served from the cache; it reconnects at most once a second.
    """

    def __init__(self, url: str, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        redis_url, self.prefix = split_driver_url(url)
        # RESP2: invalidations arrive as pub/sub messages on the listener connection.
        self.pool = redis.ConnectionPool.from_url(redis_url, socket_timeout=timeout,
                                                  socket_connect_timeout=timeout, protocol=2)
        self.clock = clock
        self._connections: list[redis.Connection] = []
        self._connecting: gevent.Greenlet | None = None
        self._sockets: dict[int, Any] = {}
        self._next_attempt = 0.0
        self.unsupported = False

    def changed(self) -> bool:
        if not self._connections:
            if self._connecting is None and not self.unsupported and self.clock() >= self._next_attempt:
                self._next_attempt = self.clock() + 1.0
                self._connecting = gevent.spawn(self._connect)  # never on the request's time
            return True
        try:
            if not readable_now(*self._sockets):
                return False
            for sock in self._sockets.values():
                if readable_now(sock) and not sock.recv(65536):
                    raise ConnectionError("closed by redis")
        except (OSError, ValueError) as exc:
            log.warning("route cache off: invalidation feed lost (%s); reconnecting", exc)
            self.close()
            return True
        return True

    def _connect(self) -> None:
        try:
            self._open()
        finally:
            self._connecting = None

    def _open(self) -> None:
        listener, tracker = self.pool.make_connection(), self.pool.make_connection()
        try:
            listener.send_command("CLIENT", "ID")
            client_id = listener.read_response()
            listener.send_command("SUBSCRIBE", "__redis__:invalidate")
            listener.read_response()
            prefixes = [arg for p in TRACKED for arg in ("PREFIX", f"{self.prefix}{p}")]
            tracker.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes)
            tracker.read_response()
        except redis.exceptions.ResponseError as exc:
            self.unsupported = True
            log.warning("route cache off: redis does not support client tracking (%s)", exc)
            listener.disconnect()
            tracker.disconnect()
            return
        except (redis.exceptions.RedisError, OSError) as exc:
            log.debug("invalidation feed not connected: %s", exc)
            listener.disconnect()
            tracker.disconnect()
            return
        self._connections = [listener, tracker]
        self._sockets = {c._sock.fileno(): c._sock for c in self._connections}

    def close(self) -> None:
        for connection in self._connections:
            connection.disconnect()
        self._connections = []
