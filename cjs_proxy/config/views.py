"""Views of the settings: what the listeners, the store and each collaborator read.

Derived values (listen addresses, driver URLs) are computed here, once. The typed views
give each collaborator a small frozen dataclass of its own keys: each field names its
dotted key (``setting("server.debug")``), ``view(cls, settings)`` builds it once per
worker, and a key that is not in the registry fails there, at start-up (and in the unit
test that builds every view from the defaults), never on a request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # loading imports this module's address helpers
    from cjs_proxy.config.loading import Settings

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
class BalanceSettings:
    """The balancing policies' defaults (``pipeline.balance``)."""

    default: str = setting("server.balance")
    sticky_cookie: str = setting("server.stickyCookie")
    sticky_secret: str | None = setting("server.stickySecret")


@dataclasses.dataclass(frozen=True)
class UpstreamSettings:
    """The backend pools: their size and timeouts."""

    max_sockets: int = setting("server.maxSockets")
    max_sockets_per_client: int = setting("server.maxSocketsPerClient")
    tcp_timeout: float = setting("server.tcpTimeout")
    connect_timeout: float | None = setting("server.connectTimeout")
    deny_backends: tuple[str, ...] = setting("server.denyBackends")
    ws_per_backend: int = setting("websocket.maxPerBackend")
    spool_max_bytes: int = setting("server.spoolMaxBytes")
    spool_bytes_per_worker: int = setting("server.spoolBytesPerWorker")


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """What the request pipeline itself reads (``wsgi.ProxyApp``)."""

    debug: bool = setting("server.debug")
    max_body: int | None = setting("server.maxRequestBodySize")
    trusted_proxies: tuple[str, ...] = setting("server.trustedProxies")
    retries: int = setting("server.retryOnError")
    ws_idle_timeout: float = setting("websocket.idleTimeout")
    ws_max_duration: float | None = setting("websocket.maxDuration")
    node_id: str | None = setting("server.nodeId")


@dataclasses.dataclass(frozen=True)
class AccessLogSettings:
    """Where and how the access log is written; where the error pages come from."""

    path: str | None = setting("server.accessLog")
    format: str = setting("server.accessLogFormat")
    static_dir: str | None = setting("server.staticDir")


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """The worker's metrics (on when an admin listener can scrape them)."""

    admin_bind: tuple[Any, ...] = setting("admin.bind")
    per_frontend: bool = setting("metrics.perFrontend")
    max_frontends: int = setting("metrics.maxFrontends")


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """What the worker class reads around requests."""

    requests_per_connection: int = setting("server.maxRequestsPerConnection")
    max_memory_mb: int | None = setting("server.maxMemoryMB")
    memory_check_interval: float = setting("server.memoryCheckInterval")
    server_header: str = setting("server.serverHeader")
    static_dir: str | None = setting("server.staticDir")


@dataclasses.dataclass(frozen=True)
class ClientLimits:
    """The clocks and the head size a client connection is held to (``workers.client_connection``)."""

    keep_alive_timeout: int = setting("server.keepAliveTimeout")
    header_timeout: float = setting("server.headerTimeout")
    max_header_bytes: int = setting("server.maxHeaderBytes")
    body_timeout: float = setting("server.bodyTimeout")
    send_timeout: float = setting("server.sendTimeout")
    linger_time: float = setting("server.lingerTime")


@dataclasses.dataclass(frozen=True)
class LimiterSettings:
    """The rate limiter's switches (its limits themselves go to Redis as one JSON argument)."""

    enabled: bool = setting("rateLimit.enabled")
    on_error: str = setting("rateLimit.onError")
    headers: bool = setting("rateLimit.headers")
    local_share: int | None = setting("rateLimit.localShare")
    #: This node's workers: ``onError: local`` divides the limits by it unless ``localShare`` is set.
    workers: int = setting("server.workers")


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    """What gunicorn's master is told: how many workers, their connections and lifetimes."""

    workers: int = setting("server.workers")
    worker_connections: int = setting("server.workerConnections")
    keep_alive_timeout: int = setting("server.keepAliveTimeout")
    graceful_timeout: int = setting("server.gracefulTimeout")
    max_requests: int = setting("server.maxRequests")
    max_requests_jitter: int = setting("server.maxRequestsJitter")


@dataclasses.dataclass(frozen=True)
class CheckerSettings:
    """The active health checker (``cjs-proxy health-check``)."""

    interval: float = setting("healthCheck.interval")
    timeout: float = setting("healthCheck.timeout")
    path: str = setting("healthCheck.path")
    concurrency: int = setting("healthCheck.concurrency")
    dead_ttl: int = setting("server.deadBackendTTL")


ALL_VIEWS: tuple[type, ...] = (RoutingSettings, HealthSettings, BalanceSettings, UpstreamSettings, ProxySettings,
                               AccessLogSettings, MetricsSettings, LimiterSettings, ProcessSettings, WorkerSettings,
                               CheckerSettings, ClientLimits)


def _addresses(values: Mapping[str, Any], section: str) -> list[tuple[str, int]]:
    return [(e["address"], e["port"] if e["port"] is not None else values[f"{section}.port"])
            for e in values[f"{section}.bind"]]


def listen_addresses(settings: Settings) -> list[str]:
    """gunicorn ``bind`` strings for the HTTP and HTTPS listeners (``[::1]:80`` for IPv6)."""
    addresses = _addresses(settings, "http") + _addresses(settings, "https")
    return [f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in addresses]


def admin_addresses(settings: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(address, port) of each admin listener; empty when ``admin.bind`` is ``[]`` (metrics off)."""
    return _addresses(settings, "admin")


def https_listeners(settings: Settings) -> list[dict[str, Any]]:
    """The HTTPS bind entries with their port filled in (per-entry key/cert/ca kept)."""
    return [{**e, "port": e["port"] if e["port"] is not None else settings["https.port"]}
            for e in settings["https.bind"]]


def embedded_socket_path(settings: Settings) -> Path:
    return Path(settings["embedded.dataDir"]) / "redis.sock"


def driver_urls(settings: Settings) -> tuple[str, str]:
    """(read URL, write URL); the embedded store is reached through its unix socket."""
    urls = settings["driver"]
    if urls is None:
        url = f"unix://{embedded_socket_path(settings)}"
        return url, url
    return urls[0], urls[-1]
