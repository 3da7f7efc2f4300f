"""The WSGI application: request -> route -> limit -> forward (or tunnel) -> log, one error handler.

gunicorn imports ``cjs_proxy.wsgi`` in each worker after the fork (and after gevent's
monkeypatching) and reads ``application``; that attribute is a factory call, so the
router, upstream pools and log are built once per worker, never at import time.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gunicorn.workers.base_async import ALREADY_HANDLED

from cjs_proxy import config
from cjs_proxy.exceptions import (
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    MethodNotAllowed,
    NoLiveBackend,
    PayloadTooLarge,
    ProxyError,
    UnsupportedTransferCoding,
)
from cjs_proxy.pipeline.accesslog import AccessEntry, AccessLog
from cjs_proxy.pipeline.error_pages import ErrorPages, reason_phrase
from cjs_proxy.pipeline.headers import (
    client_address,
    downstream_response_headers,
    escape_header_value,
    is_trusted,
    new_request_id,
    parse_networks,
    upstream_request_headers,
)
from cjs_proxy.pipeline.http1 import ResponseHead
from cjs_proxy.pipeline.measured import MeasuredRouteCache, MeasuredStore
from cjs_proxy.pipeline.metrics import NoMetrics, build_metrics, limit_decision
from cjs_proxy.pipeline.passive_health import Backend, BackendHealth
from cjs_proxy.pipeline.ratelimit import RateLimiter
from cjs_proxy.pipeline.router import Route, Router, normalize_host
from cjs_proxy.pipeline.store import InvalidationFeed, RouteStore
from cjs_proxy.pipeline.upstream import RequestBody, Upstream, UpstreamBroken, UpstreamResponse, make_session
from cjs_proxy.pipeline.websocket import WEBSOCKET, Tunnel, is_upgrade

log = logging.getLogger("cjs_proxy")

StartResponse = Callable[..., Any]
T = TypeVar("T")
#: Hipache's liveness host: answered by the proxy itself, never routed.
PING_HOST = "__ping__"
#: Redis connections per worker; requests beyond it wait for one (``server.redisTimeout``).
REDIS_POOL_SIZE = 64
#: What a forwarded ``X-Request-ID`` may look like (it is logged unquoted).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Methods a backend may see twice without harm (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Exchange:
    """What the log needs to know about one request, filled in as it goes."""

    __slots__ = (
        "backend",
        "bytes_sent",
        "client_ip",
        "decision",
        "environ",
        "extra",
        "host_header",
        "request_id",
        "retries",
        "route",
        "routed_host",
        "started",
        "status",
        "target",
        "upstream_started",
        "upstream_time",
        "verdict",
        "wall_started",
    )

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.started = time.perf_counter()
        self.wall_started = time.time()
        self.client_ip = environ.get("REMOTE_ADDR") or "-"
        self.request_id = "-"
        self.route: Route | None = None
        #: What the backend is sent: the target as written (origin form) and the Host.
        self.target = "/"
        self.host_header = ""
        self.routed_host = ""
        self.backend: Backend | None = None
        self.upstream_started: float | None = None
        self.upstream_time: float | None = None
        self.status = 0
        self.bytes_sent = 0
        self.retries = 0
        self.extra = ""
        #: The limiter's verdict and decision at the first lookup (a retry's lookup has none).
        self.verdict: Any = None
        self.decision = "-"


class ProxyApp:
    """The proxy as a WSGI callable; collaborators are passed in, so tests can swap them."""

    def __init__(self, settings: config.Settings, router: Router, limiter: RateLimiter,
                 health: BackendHealth, upstream: Upstream, pages: ErrorPages, access_log: AccessLog,
                 metrics: NoMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or NoMetrics()
        self.router = router
        self.limiter = limiter
        self.health = health
        self.upstream = upstream
        self.pages = pages
        self.access_log = access_log
        self.debug = settings["server.debug"]
        self.max_body = settings["server.maxRequestBodySize"]
        self.trusted = parse_networks(settings["server.trustedProxies"])
        self.retries = settings["server.retryOnError"]
        self.ws_idle_timeout = settings["websocket.idleTimeout"]
        self.ws_max_duration = settings["websocket.maxDuration"]
        https = config.https_listeners(settings)
        self.https_port = https[0]["port"] if https and settings["https.redirectHttp"] else None

    # ------------------------------------------------------------------ pipeline

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        exchange = Exchange(environ)
        self.metrics.started()
        try:
            return self._proxy(exchange, start_response)
        except ProxyError as exc:
            return self._answer_error(exchange, start_response, exc)
        except Exception as exc:
            log.exception("unexpected error handling %s %s", environ.get("REQUEST_METHOD"),
                          environ.get("RAW_URI"))
            return self._answer_error(exchange, start_response, ProxyError(f"{type(exc).__name__}: {exc}"))

    def _proxy(self, exchange: Exchange, start_response: StartResponse) -> Iterable[bytes]:
        environ = exchange.environ
        if environ["REQUEST_METHOD"] == "CONNECT":
            raise MethodNotAllowed("CONNECT: this is a reverse proxy, not a tunnel")
        target, host_header = target_and_host(environ)
        host = normalize_host(host_header)
        exchange.target, exchange.host_header, exchange.routed_host = target, host_header or host, host
        if host == PING_HOST:
            return self._answer(exchange, start_response, "200 OK", b"ok")
        if self.https_port is not None and request_scheme(environ) == "http":
            return self._redirect_to_https(exchange, start_response, host)
        exchange.client_ip = client_address(environ, self.trusted)
        exchange.request_id = self._request_id(environ)
        body = self._request_body(environ)
        exchange.route = self.router.resolve(host, self.limiter.script_args(exchange.client_ip))
        exchange.verdict = exchange.route.limit
        exchange.decision = limit_decision(exchange.verdict, self.limiter.enabled, True)
        if exchange.route.stale:
            self.metrics.route_lookup("stale")
        limit_headers = self.limiter.check(exchange.route, exchange.client_ip)
        if is_upgrade(environ) and "gunicorn.socket" in environ:
            return self._tunnel(exchange, host, start_response, limit_headers)
        response = self._with_retries(exchange, host, body, lambda: self._forward(exchange, body))
        self._check_answer(exchange, response.status, response.headers)
        return self._relay(exchange, response, start_response, limit_headers)

    def _check_answer(self, exchange: Exchange, status: int, headers: list[tuple[str, str]]) -> None:
        assert exchange.route is not None and exchange.backend is not None
        self.health.check_answer(exchange.route, exchange.backend, status, headers)

    def _with_retries(self, exchange: Exchange, host: str, body: RequestBody | None,
                      attempt: Callable[[], T]) -> T:
        """Run ``attempt`` on a backend; on a connection failure count it against it and try another.

        The route is read again before each retry, so the new dead mark (and any
        change an operator made) is seen. A request is retried only while no backend
        can have acted on it: the connection failed before anything was sent, or the
        method is idempotent and has no body.
        """
        tried: list[str] = []
        last_error: BackendUnavailable | None = None
        while True:
            assert exchange.route is not None
            try:
                exchange.backend = self.health.choose(exchange.route, tried)
                if exchange.backend.id in exchange.route.frontend.dead:
                    self.metrics.panic()
            except NoLiveBackend:
                if last_error is None:
                    raise
                raise last_error from None
            try:
                return attempt()
            except BackendUnavailable as exc:
                self.metrics.upstream_error(exc)
                self.health.record_failure(exchange.route, exchange.backend, exc.detail)
                tried.append(exchange.backend.url)
                last_error = exc
                if exchange.retries >= self.retries or not may_retry(exc, exchange, body):
                    raise
                exchange.retries += 1
                log.info("%s: retrying on another backend (%d/%d) after: %s",
                         host, exchange.retries, self.retries, exc.detail)
                exchange.route = self.router.resolve(host)

    def _tunnel(self, exchange: Exchange, host: str, start_response: StartResponse,
                limit_headers: list[tuple[str, str]]) -> Any:
        """A WebSocket upgrade: relay the handshake, then hand both sockets to a ``Tunnel``."""
        environ = exchange.environ
        response = self._with_retries(exchange, host, None, lambda: self._open_tunnel(exchange))
        self._check_answer(exchange, response.status, response.headers)
        if response.status != 101:  # refused: an ordinary response, relayed as such
            return self._relay(exchange, response, start_response, limit_headers)
        exchange.status = 101
        backend_sock, early_bytes = response.detach()
        client = environ["gunicorn.socket"]
        try:
            client.sendall(response.head.raw)  # the backend's handshake answer, verbatim
            self.metrics.tunnel(+1)
            try:
                stats = Tunnel(client, backend_sock, self.ws_idle_timeout, self.ws_max_duration).run(early_bytes)
            finally:
                self.metrics.tunnel(-1)
        except OSError as exc:
            log.info("%s: websocket client went away during the handshake: %s", host, exc)
            backend_sock.close()
            exchange.extra = "ws=0/0 aborted"
        else:
            exchange.bytes_sent = stats.backend_to_client
            exchange.extra = (f"ws={stats.client_to_backend}/{stats.backend_to_client} "
                              f"{stats.duration:.3f}s{' ' + stats.ended_by if stats.ended_by else ''}")
        self.log_exchange(exchange)
        return ALREADY_HANDLED

    def _open_tunnel(self, exchange: Exchange) -> UpstreamResponse:
        assert exchange.backend is not None
        headers = self._upstream_headers(exchange)
        headers += [("Connection", "Upgrade"), ("Upgrade", WEBSOCKET)]
        exchange.upstream_started = time.perf_counter()
        try:
            return self.upstream.open_upgrade(exchange.backend.url, exchange.environ["REQUEST_METHOD"],
                                              exchange.target, headers, WEBSOCKET)
        finally:
            exchange.upstream_time = time.perf_counter() - exchange.upstream_started

    def _request_id(self, environ: dict[str, Any]) -> str:
        """A client's ``X-Request-ID`` is kept only from a trusted proxy."""
        given = environ.get("HTTP_X_REQUEST_ID")
        if given and REQUEST_ID.fullmatch(given) and self.trusted \
                and is_trusted(environ.get("REMOTE_ADDR", ""), self.trusted):
            return given
        return new_request_id()

    def _request_body(self, environ: dict[str, Any]) -> RequestBody | None:
        coding = environ.get("HTTP_TRANSFER_ENCODING")
        if coding is not None:
            if [t.strip() for t in coding.lower().split(",")] != ["chunked"]:
                raise UnsupportedTransferCoding(f"request Transfer-Encoding {coding!r}")
            return RequestBody(environ["wsgi.input"], None, self.max_body)
        length = content_length(environ)
        if self.max_body is not None and length > self.max_body:
            raise PayloadTooLarge(f"declared body of {length} bytes exceeds {self.max_body}")
        return RequestBody(environ["wsgi.input"], length) if length else None

    def _upstream_headers(self, exchange: Exchange) -> list[tuple[str, str]]:
        environ = exchange.environ
        return upstream_request_headers(
            environ, host=exchange.host_header, routed_host=exchange.routed_host, client_ip=exchange.client_ip,
            proto=request_scheme(environ), port=environ.get("SERVER_PORT", ""), request_id=exchange.request_id,
            trusted_peer=bool(self.trusted) and is_trusted(environ.get("REMOTE_ADDR", ""), self.trusted))

    def _forward(self, exchange: Exchange, body: RequestBody | None) -> UpstreamResponse:
        environ = exchange.environ
        assert exchange.backend is not None
        headers = self._upstream_headers(exchange)
        exchange.upstream_started = time.perf_counter()
        try:
            return self.upstream.send(exchange.backend.url, environ["REQUEST_METHOD"], exchange.target,
                                      headers, body, early_hints_relay(environ))
        finally:
            exchange.upstream_time = time.perf_counter() - exchange.upstream_started

    def _relay(self, exchange: Exchange, response: UpstreamResponse, start_response: StartResponse,
               extra_headers: list[tuple[str, str]]) -> Iterable[bytes]:
        headers = downstream_response_headers(response.headers)
        headers.extend(extra_headers)
        if self._wants_debug(exchange):
            headers.extend(self._debug_headers(exchange))
        exchange.status = response.status
        try:
            start_response(status_line(response.status, response.reason), headers)
        except Exception:
            response.close()
            raise
        return RelayedBody(self, exchange, response.iter_body(), response.close)

    # ---------------------------------------------------------------- answers

    def _answer(self, exchange: Exchange, start_response: StartResponse, status: str,
                body: bytes, content_type: str = "text/plain") -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        exchange.status = int(status[:3])
        exchange.bytes_sent = len(body)
        self._measure(exchange)  # not logged (``__ping__``), but counted
        return [body]

    def _redirect_to_https(self, exchange: Exchange, start_response: StartResponse, host: str) -> list[bytes]:
        """``https.redirectHttp``: the same URL over HTTPS, permanently."""
        port = "" if self.https_port == 443 else f":{self.https_port}"
        location = f"https://{host}{port}{exchange.target}"
        body = f"Moved to {location}\n".encode()
        start_response("301 Moved Permanently", [("Location", location), ("Content-Type", "text/plain"),
                                                 ("Content-Length", str(len(body)))])
        exchange.status, exchange.bytes_sent = 301, len(body)
        self.log_exchange(exchange)
        return [body]

    def _answer_error(self, exchange: Exchange, start_response: StartResponse,
                      error: ProxyError) -> list[bytes]:
        """The one place a ``ProxyError`` becomes a response (and a log line)."""
        if (error.status >= 500 or error.status == 499) and not error.logged:
            log.warning("%s %s (host %s): %s", error.status, type(error).__name__,
                        exchange.environ.get("HTTP_HOST"), error.detail)
        status, headers, body = self.pages.response(error.status, error.detail)
        headers.extend(error.headers)
        if self._wants_debug(exchange):
            headers.append(("x-debug-error", escape_header_value(error.detail)))
            if exchange.route is not None:
                headers.extend(self._debug_headers(exchange))
        exchange.status = error.status
        exchange.bytes_sent = len(body)
        start_response(status, headers)
        self.log_exchange(exchange)
        return [body]

    def _wants_debug(self, exchange: Exchange) -> bool:
        return self.debug and "HTTP_X_DEBUG" in exchange.environ

    def _debug_headers(self, exchange: Exchange) -> list[tuple[str, str]]:
        """Hipache's ``x-debug-*`` headers (times in milliseconds)."""
        headers = []
        if exchange.route is not None:
            headers += [("x-debug-vhost", escape_header_value(exchange.route.identifier)),
                        ("x-debug-frontend-key", exchange.route.frontend.key)]
        if exchange.backend is not None:
            headers += [("x-debug-backend-url", escape_header_value(exchange.backend.url)),
                        ("x-debug-backend-id", str(exchange.backend.id))]
        now = time.perf_counter()
        headers.append(("x-debug-time-total", f"{(now - exchange.started) * 1000:.3f}"))
        headers.append(("x-debug-worker", str(os.getpid())))  # which worker answered
        if exchange.upstream_time is not None:
            headers.append(("x-debug-time-backend", f"{exchange.upstream_time * 1000:.3f}"))
        return headers

    # -------------------------------------------------------------------- logging

    def log_exchange(self, exchange: Exchange) -> None:
        environ = exchange.environ
        route, backend = exchange.route, exchange.backend
        self.access_log.write(AccessEntry(
            remote_addr=exchange.client_ip,
            method=environ.get("REQUEST_METHOD", "-"),
            uri=environ.get("RAW_URI", "-"),
            protocol=environ.get("SERVER_PROTOCOL", "-"),
            status=exchange.status,
            bytes_sent=exchange.bytes_sent,
            referer=environ.get("HTTP_REFERER", "-"),
            user_agent=environ.get("HTTP_USER_AGENT", "-"),
            vhost=route.identifier if route else "-",
            upstream=upstream_address(backend.url) if backend else "-",
            request_time=time.perf_counter() - exchange.started,
            upstream_time=exchange.upstream_time,
            request_id=exchange.request_id,
            started=exchange.wall_started,
            extra=exchange.extra,
            limit=exchange.decision,
        ))
        self._measure(exchange)

    def _measure(self, exchange: Exchange) -> None:
        """The request's metrics, once it is answered (or its tunnel closed)."""
        route = exchange.route
        self.metrics.finished(exchange.status, time.perf_counter() - exchange.started, exchange.upstream_time,
                              route.identifier if route else None, exchange.retries,
                              exchange.verdict, exchange.decision)

    def reopen_logs(self) -> None:
        self.access_log.reopen()

    def close(self) -> None:
        self.upstream.close()
        self.router.store.close()
        self.access_log.close()


class RelayedBody:
    """The backend's body on its way to the client; logs the exchange when done.

    If the backend breaks mid-body, the client connection is reset (RST) rather than
    ended cleanly, so no client can take a truncated body for a complete one.
    """

    def __init__(self, app: ProxyApp, exchange: Exchange, body: Iterator[bytes],
                 release: Callable[[], None]) -> None:
        self.app = app
        self.exchange = exchange
        self.body = body
        self.release = release

    def __iter__(self) -> Iterator[bytes]:
        exchange = self.exchange
        try:
            for chunk in self.body:
                exchange.bytes_sent += len(chunk)
                yield chunk
        except (UpstreamBroken, BackendUnavailable) as exc:
            log.warning("resetting client connection: %s", exc)
            self.app.metrics.upstream_error(exc)
            reset_client(exchange.environ)
            # An OSError tells gunicorn the connection is gone: it writes nothing more.
            raise ConnectionResetError(errno.ECONNRESET, f"backend broke mid-body: {exc}") from exc

    def close(self) -> None:
        try:
            self.release()
        finally:
            self.app.log_exchange(self.exchange)


# ------------------------------------------------------------------------ helpers


def may_retry(error: BackendUnavailable, exchange: Exchange, body: RequestBody | None) -> bool:
    if error.before_request:
        return body is None or body.sent == 0
    idempotent = exchange.environ.get("REQUEST_METHOD") in IDEMPOTENT
    return idempotent and body is None and not isinstance(error, BackendTimeout)


def request_scheme(environ: dict[str, Any]) -> str:
    """``https`` when the client connection is TLS (per listener, not gunicorn's global flag)."""
    return "https" if isinstance(environ.get("gunicorn.socket"), ssl.SSLSocket) else "http"


def target_and_host(environ: dict[str, Any]) -> tuple[str, str | None]:
    """The origin-form target to send upstream, exactly as written, and the Host to route on.

    An absolute-form target's authority replaces ``Host`` (RFC 9112 3.2.2), and the
    backend is sent its path and query; a scheme other than http/https is refused.
    """
    raw_uri = environ.get("RAW_URI") or "/"
    if raw_uri[0] == "/" or raw_uri == "*":
        return raw_uri, environ.get("HTTP_HOST")
    scheme, sep, _ = raw_uri.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadRequest(f"request target {raw_uri[:100]!r}: only origin form and http(s) absolute form")
    parts = urlsplit(raw_uri)
    if not parts.netloc or "@" in parts.netloc:
        raise BadRequest(f"request target {raw_uri[:100]!r}: no usable authority")
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), parts.netloc


def early_hints_relay(environ: dict[str, Any]) -> Any:
    """Relays a backend's ``103 Early Hints`` (its ``Link`` headers) through gunicorn's early hints.

    Other informational answers (100, 102) are the backend's business and are dropped.
    """
    send = environ.get("wsgi.early_hints")
    if send is None:
        return None

    def relay(head: ResponseHead) -> None:
        links = [("Link", value) for name, value in head.headers if name.lower() == "link"]
        if head.status == 103 and links:
            send(links)

    return relay


def content_length(environ: dict[str, Any]) -> int:
    value = environ.get("CONTENT_LENGTH")
    if not value:
        return 0
    if not value.isdigit():
        raise BadRequest(f"invalid Content-Length {value!r}")
    return int(value)


def status_line(status: int, reason: str) -> str:
    if not reason or not reason.isprintable():
        reason = reason_phrase(status)
    return f"{status} {reason}"


def upstream_address(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


def reset_client(environ: dict[str, Any]) -> None:
    """Close the client connection with an RST (``SO_LINGER`` 0): a FIN would let a client
    that does not check lengths take a truncated body for a complete one."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already gone: nothing left to reset
    sock.close()


# ---------------------------------------------------------------------- factory


def create_app(settings: config.Settings | None = None) -> ProxyApp:
    """Build a worker's proxy: its router, upstream pools, error pages and access log."""
    settings = settings or config.worker_settings()
    read_url, write_url = config.driver_urls(settings)
    metrics = build_metrics(bool(config.admin_addresses(settings)), settings["metrics.perFrontend"],
                            settings["metrics.maxFrontends"])
    store = MeasuredStore.measured(
        RouteStore.from_urls(read_url, write_url, settings["server.redisTimeout"], REDIS_POOL_SIZE), metrics)
    cache = MeasuredRouteCache(InvalidationFeed(read_url, settings["server.redisTimeout"])) \
        if settings["server.routeCache"] else None
    if cache is not None:
        cache.metrics = metrics
    router = Router(store, settings["server.staleRouteTTL"], cache=cache)
    health = BackendHealth(store, settings["server.deadBackendTTL"], settings["server.deadBackendOn500"],
                           dead_after=settings["server.deadBackendAfter"])
    tcp_timeout = settings["server.tcpTimeout"]
    upstream = Upstream(make_session(settings["server.maxSockets"]),
                        connect_timeout=settings["server.connectTimeout"] or tcp_timeout,
                        read_timeout=tcp_timeout)
    return ProxyApp(settings, router, RateLimiter(settings), health, upstream, ErrorPages(settings["server.staticDir"]),
                    AccessLog(settings["server.accessLog"], settings["server.accessLogFormat"]), metrics)


def __getattr__(name: str) -> Any:
    """``cjs_proxy.wsgi.application``: built on first access, i.e. in each worker."""
    if name == "application":
        return create_app()
    raise AttributeError(name)
