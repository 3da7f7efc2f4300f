"""The operator's Redis: the CLI's frontend and certificate edits, registrations and the active
health checker's writes.

The proxy's workers never use this module (their Redis is ``pipeline.store``): here are
the scans, batch writes and transactions that have no place on a request's path. Key
names come from ``pipeline.redis_keys``, so both sides agree on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import redis

from cjs_proxy.pipeline.redis_keys import (
    BACKENDS,
    CHECKER_PING_KEY,
    DEAD_CHANNEL,
    TLS_CERTIFICATE_FIELD,
    TLS_KEY_FIELD,
    KeySpace,
    dead_message,
)
from cjs_proxy.pipeline.store import LuaScript, connect_pair

LUA_DIR = Path(__file__).resolve().parent / "lua"
#: Hosts per pipelined round trip when the checker reads or writes every frontend.
BATCH = 500


class AdminStore:
    """Frontends and dead sets as ``cjs-proxy`` (add/show/list/remove, health-check) sees them."""

    def __init__(self, reader: redis.Redis, writer: redis.Redis, prefix: str = "") -> None:
        self.reader = reader
        self.writer = writer
        self.keys = KeySpace(prefix)
        self._set_dead_script = LuaScript(LUA_DIR / "set_dead.lua")
        self._register_script = LuaScript(LUA_DIR / "register.lua")
        self._deregister_script = LuaScript(LUA_DIR / "deregister.lua")

    @classmethod
    def from_urls(cls, read_url: str, write_url: str, timeout: float,
                  max_connections: int) -> AdminStore:
        return cls(*connect_pair(read_url, write_url, timeout, max_connections))

    # Active health checks (``cjs-proxy health-check``).

    def checker_ping(self, now: int) -> None:
        """Tell the proxies (and Hipache's) that an external checker owns the dead sets."""
        self.writer.set(CHECKER_PING_KEY, now)

    def set_dead(self, dead_by_host: dict[str, set[int]] | dict[str, set[str]], ttl: int,
                 by_url: bool = False) -> None:
        """Replace each ``dead:<host>`` (``deadurls:<host>`` with ``by_url``) with the checker's
        view (TTL-bound, in case it dies).

        One atomic script call per host (a proxy never reads a half-written set),
        pipelined in batches.
        """
        script = self._set_dead_script
        self.writer.script_load(script.source)
        hosts = list(dead_by_host)
        for start in range(0, len(hosts), BATCH):
            with self.writer.pipeline(transaction=False) as pipe:
                for host in hosts[start:start + BATCH]:
                    key = self.keys.dead_urls(host) if by_url else self.keys.dead(host)
                    members: set[Any] = dead_by_host[host]
                    pipe.evalsha(script.sha, 1, key, ttl, *sorted(members))
                pipe.execute()

    def publish_dead(self, host: str, backend_id: int, backend_url: str, backend_count: int) -> None:
        self.writer.publish(DEAD_CHANNEL, dead_message(host, backend_id, backend_url, backend_count))

    def all_frontends(self) -> dict[str, list[str]]:
        """Every ``frontend:`` list (for the checker), read in pipelined batches."""
        hosts = self.frontend_hosts()
        result: dict[str, list[str]] = {}
        for start in range(0, len(hosts), BATCH):
            batch = hosts[start:start + BATCH]
            with self.reader.pipeline(transaction=False) as pipe:
                for host in batch:
                    pipe.lrange(self.keys.frontend(host), 0, -1)
                for host, values in zip(batch, pipe.execute(), strict=True):
                    if values:
                        result[host] = [v.decode("utf-8", "replace") for v in values]
        return result

    def all_registered(self) -> dict[str, list[str]]:
        """Every host's live registered backends (for the checker); expired ones are pruned."""
        now_ms = self.redis_time_ms()
        keys = [k.decode() for k in self.writer.scan_iter(match=self.keys.backends("*"), count=1000)]
        result: dict[str, list[str]] = {}
        for start in range(0, len(keys), BATCH):
            batch = keys[start:start + BATCH]
            with self.writer.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.zremrangebyscore(key, "-inf", now_ms)
                    pipe.zrange(key, 0, -1)
                replies = pipe.execute()
            for key, members in zip(batch, replies[1::2], strict=True):
                if members:
                    result[self.keys.host_of(key, BACKENDS)] = [m.decode("utf-8", "replace") for m in members]
        return result

    # Self-registration (``cjs-proxy register``, ``cjs_proxy.registration``).

    def register(self, host: str, url: str, ttl: int, weight: int | None = None,
                 identifier: str | None = None) -> bool:
        """Add or renew ``url`` in ``backends:<host>`` for ``ttl`` seconds; True when it was new."""
        keys = [self.keys.backends(host), self.keys.weights(host), self.keys.identifier(host)]
        args = (url, ttl, "" if weight is None else weight, identifier or "")
        return bool(self._register_script(self.writer, keys, args))

    def deregister(self, host: str, url: str, owns_weight: bool = False) -> bool:
        keys = [self.keys.backends(host), self.keys.weights(host)]
        return bool(self._deregister_script(self.writer, keys, (url, "1" if owns_weight else "0")))

    def redis_time_ms(self) -> int:
        seconds, micros = cast(Any, self.writer.time())
        return int(seconds) * 1000 + int(micros) // 1000

    def registrations(self, host: str) -> list[tuple[str, float]]:
        """``host``'s registered backends and their seconds left, live ones only."""
        now_ms = self.redis_time_ms()
        members: list[tuple[bytes, float]] = cast(Any, self.reader.zrangebyscore(
            self.keys.backends(host), f"({now_ms}", "+inf", withscores=True))
        return [(m.decode("utf-8", "replace"), (score - now_ms) / 1000) for m, score in members]

    def dead_urls(self, host: str) -> set[str]:
        members: set[bytes] = cast(Any, self.reader.smembers(self.keys.dead_urls(host)))
        return {m.decode("utf-8", "replace") for m in members}

    def identifier(self, host: str) -> str | None:
        """``identifier:<host>``: the identifier of a frontend made of registered backends only."""
        value: bytes | None = cast(Any, self.reader.get(self.keys.identifier(host)))
        return value.decode("utf-8", "replace") if value is not None else None

    # Administration (the CLI).

    def set_frontend(self, host: str, identifier: str, backends: list[str]) -> None:
        """Replace ``frontend:<host>`` atomically and clear its dead marks (ids change)."""
        key = self.keys.frontend(host)
        with self.writer.pipeline(transaction=True) as pipe:
            pipe.delete(key, self.keys.dead(host))
            pipe.rpush(key, identifier, *backends)
            pipe.execute()

    def get_frontend(self, host: str) -> tuple[list[str], set[int]]:
        with self.reader.pipeline(transaction=True) as pipe:
            pipe.lrange(self.keys.frontend(host), 0, -1)
            pipe.smembers(self.keys.dead(host))
            values, dead = pipe.execute()
        return [v.decode() for v in values], {int(d) for d in dead if d.isdigit()}

    def delete_frontend(self, host: str) -> bool:
        return bool(self.writer.delete(self.keys.frontend(host), self.keys.dead(host)))

    def frontend_hosts(self) -> list[str]:
        pattern = self.keys.frontend("*")
        return sorted(self.keys.host_of_frontend(k.decode())
                      for k in self.reader.scan_iter(match=pattern, count=1000))

    def registered_hosts(self) -> list[str]:
        """Hosts with a ``backends:`` set (some members may have expired)."""
        return sorted(self.keys.host_of(k.decode(), BACKENDS)
                      for k in self.reader.scan_iter(match=self.keys.backends("*"), count=1000))

    # Certificates (``cjs-proxy cert``): ``tls:<servername>`` hashes, PlanB's schema.

    def set_certificate(self, name: str, chain: bytes, key: bytes) -> None:
        """Write both fields in one HSET: a worker never reads a new certificate with the old key.

        A field other tools may have added to the hash is left alone.
        """
        self.writer.hset(self.keys.tls(name), mapping={TLS_CERTIFICATE_FIELD: chain, TLS_KEY_FIELD: key})

    def get_certificate_chain(self, name: str) -> bytes | None:
        """The PEM chain of ``tls:<name>`` (never the key: the CLI does not show it)."""
        chain = self.reader.hget(self.keys.tls(name), TLS_CERTIFICATE_FIELD)
        if chain is None:
            return None
        return chain if isinstance(chain, bytes) else str(chain).encode()

    def delete_certificate(self, name: str) -> bool:
        return bool(self.writer.delete(self.keys.tls(name)))

    def certificate_names(self) -> list[str]:
        """Every name with a ``tls:`` hash, sorted."""
        pattern = self.keys.tls("*")
        return sorted(self.keys.name_of_tls(k.decode()) for k in self.reader.scan_iter(match=pattern, count=1000))

    def close(self) -> None:
        self.reader.close()
        if self.writer is not self.reader:
            self.writer.close()
