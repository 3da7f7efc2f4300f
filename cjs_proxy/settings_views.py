"""Typed views of the settings: each collaborator gets a small frozen dataclass of its own keys.

The registry (``config.SETTINGS``) stays the one place where keys, defaults, checks and
documentation live; a view only says which keys a collaborator reads and what Python
type they have once checked. Each field names its dotted key (``setting("server.debug")``);
``view(cls, settings)`` builds the view once per worker, and a key that is not in the
registry fails there, at start-up (and in the unit test that builds every view from
the defaults), never on a request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

V = TypeVar("V")


def setting(key: str) -> Any:
    """A view field read from the dotted ``key``."""
    return dataclasses.field(metadata={"key": key})


def keys_of(cls: type) -> dict[str, str]:
    """Field name -> dotted key, for a view class."""
    return {f.name: f.metadata["key"] for f in dataclasses.fields(cls)}


def view(cls: type[V], settings: Mapping[str, Any]) -> V:
    """``cls`` filled from ``settings``; ``KeyError`` naming the key if the registry lacks it."""
    values = {}
    for name, key in keys_of(cls).items():
        try:
            value = settings[key]
        except KeyError:
            raise KeyError(f"{cls.__name__}.{name} reads {key!r}, which is not a setting") from None
        values[name] = tuple(value) if isinstance(value, list) else value  # frozen all the way down
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class RoutingSettings:
    """What the router and its Redis store read."""

    redis_timeout: float = setting("server.redisTimeout")
    route_cache: bool = setting("server.routeCache")
    stale_route_ttl: int = setting("server.staleRouteTTL")


@dataclasses.dataclass(frozen=True)
class HealthSettings:
    """Passive health: when a backend is marked dead, and for how long."""

    dead_ttl: int = setting("server.deadBackendTTL")
    dead_on_500: bool = setting("server.deadBackendOn500")
    dead_after: int = setting("server.deadBackendAfter")


@dataclasses.dataclass(frozen=True)
class UpstreamSettings:
    """The backend pools: their size and timeouts."""

    max_sockets: int = setting("server.maxSockets")
    tcp_timeout: float = setting("server.tcpTimeout")
    connect_timeout: float | None = setting("server.connectTimeout")


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """What the request pipeline itself reads."""

    debug: bool = setting("server.debug")
    max_body: int | None = setting("server.maxRequestBodySize")
    trusted_proxies: tuple[str, ...] = setting("server.trustedProxies")
    retries: int = setting("server.retryOnError")
    redirect_http: bool = setting("https.redirectHttp")
    static_dir: str | None = setting("server.staticDir")
    access_log: str | None = setting("server.accessLog")


@dataclasses.dataclass(frozen=True)
class WebSocketSettings:
    """Tunnel limits."""

    idle_timeout: float = setting("websocket.idleTimeout")
    max_duration: float | None = setting("websocket.maxDuration")


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """What the worker class reads around requests."""

    requests_per_connection: int = setting("server.maxRequestsPerConnection")
    max_memory_mb: int | None = setting("server.maxMemoryMB")
    memory_check_interval: float = setting("server.memoryCheckInterval")
    server_header: str = setting("server.serverHeader")
    static_dir: str | None = setting("server.staticDir")


@dataclasses.dataclass(frozen=True)
class CheckerSettings:
    """The active health checker (``cjs-proxy health-check``)."""

    interval: float = setting("healthCheck.interval")
    timeout: float = setting("healthCheck.timeout")
    path: str = setting("healthCheck.path")
    concurrency: int = setting("healthCheck.concurrency")
    dead_ttl: int = setting("server.deadBackendTTL")


ALL_VIEWS: tuple[type, ...] = (RoutingSettings, HealthSettings, UpstreamSettings, ProxySettings,
                               WebSocketSettings, WorkerSettings, CheckerSettings)
