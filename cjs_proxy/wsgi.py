"""The WSGI application: request -> route -> limit -> forward (or tunnel) -> log, one error handler.

gunicorn imports ``cjs_proxy.wsgi`` in each worker after the fork (and after gevent's
monkeypatching) and reads ``application``. Nothing is built at import time: the worker
class first calls ``build_application`` with the settings its master handed it, which
builds the router, upstream pools and log once and stores the app as the module's
``application``; every later read, gunicorn's included, finds that same app.
"""


from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.workers.base_async import ALREADY_HANDLED

from cjs_proxy import config
from cjs_proxy.config.views import (
    AccessLogSettings,
    BalanceSettings,
    HealthSettings,
    MetricsSettings,
    ProxySettings,
    RoutingSettings,
    UpstreamSettings,
    view,
)
from cjs_proxy.exceptions import BackendTimeout, BackendUnavailable, NoLiveBackend, ProxyError
from cjs_proxy.pipeline.accesslog import AccessLog
from cjs_proxy.pipeline.balance import Balancer
from cjs_proxy.pipeline.debug_headers import debug_headers, error_debug_headers, wants_debug
from cjs_proxy.pipeline.error_pages import ErrorPages
from cjs_proxy.pipeline.exchange import Exchange, access_entry
from cjs_proxy.pipeline.headers import client_address, downstream_response_headers, parse_networks
from cjs_proxy.pipeline.invalidation import InvalidationFeed
from cjs_proxy.pipeline.loops import forwarded_via, new_node_id, refuse_loop
from cjs_proxy.pipeline.measured import MeasuredRouteCache, MeasuredStore
from cjs_proxy.pipeline.metrics import NoMetrics, build_metrics, limit_decision
from cjs_proxy.pipeline.passive_health import Backend, BackendHealth
from cjs_proxy.pipeline.ratelimit import RateLimiter
from cjs_proxy.pipeline.redirect import https_redirect, https_redirect_port
from cjs_proxy.pipeline.relay import StreamedBody, early_hints_relay, status_line
from cjs_proxy.pipeline.request import (
    ClientRequest,
    refuse_connect,
    request_body,
    request_id,
    request_scheme,
    target_and_host,
    trusted_peer,
)
from cjs_proxy.pipeline.router import Route, Router, normalize_host
from cjs_proxy.pipeline.spool import SpoolBudget
from cjs_proxy.pipeline.store import RouteStore
from cjs_proxy.pipeline.upstream import RequestBody, Upstream, UpstreamResponse, make_session
from cjs_proxy.pipeline.websocket import is_upgrade, open_tunnel, run_tunnel

log = logging.getLogger("cjs_proxy")

StartResponse = Callable[..., Any]
Headers = list[tuple[str, str]]
#: One way of sending a request to a backend: forwarding it, or opening a tunnel.
SendStep = Callable[[ClientRequest, Backend, Headers], UpstreamResponse]
#: Hipache's liveness host: answered by the proxy itself, never routed.
PING_HOST = "__ping__"
#: Redis connections per worker; requests beyond it wait for one (``server.redisTimeout``).
REDIS_POOL_SIZE = 64
#: Methods a backend may see twice without harm (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class ProxyApp:
    """The proxy as a WSGI callable; collaborators are passed in, so tests can swap them
    (``tests/unit/test_wsgi.py`` builds it with fakes)."""

    def __init__(self, options: ProxySettings, router: Router, limiter: RateLimiter,
                 health: BackendHealth, upstream: Upstream, pages: ErrorPages, access_log: AccessLog,
                 metrics: NoMetrics | None = None, https_port: int | None = None,
                 balancer: Balancer | None = None) -> None:
        self.metrics = metrics or NoMetrics()
        self.balancer = balancer or Balancer()
        self.router = router
        self.limiter = limiter
        self.health = health
        self.upstream = upstream
        self.pages = pages
        self.access_log = access_log
        self.debug = options.debug
        self.max_body = options.max_body
        self.trusted = parse_networks(options.trusted_proxies)
        self.retries = options.retries
        self.ws_idle_timeout = options.ws_idle_timeout
        self.ws_max_duration = options.ws_max_duration
        self.node_id = options.node_id or new_node_id()  # the master's, unless started without one
        #: ``https.redirectHttp``: plain HTTP is answered with a 301 to this port.
        self.https_port = https_port

    # ------------------------------------------------------------------ pipeline

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """One request; any failure becomes an answer here, and only here."""
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
        """request -> route -> limit -> forward (or tunnel) -> log (when the body is done)."""
        environ = exchange.environ
        refuse_connect(environ)
        target, host_header = target_and_host(environ)
        host = normalize_host(host_header)
        if host == PING_HOST:
            return self._answer_ping(exchange, start_response)
        if self.https_port is not None and request_scheme(environ) == "http":
            return self._answer_redirect(exchange, start_response, https_redirect(host, self.https_port, target))
        request = self._read_request(exchange, target, host_header or host, host)
        route = exchange.route = self.router.resolve(host, self.limiter.script_args(request.client_ip))
        self._note_limits(exchange, route, request.client_ip)
        limit_headers = self.limiter.check(route, request.client_ip, exchange.verdict)
        if is_upgrade(environ) and "gunicorn.socket" in environ:
            return self._tunnel(exchange, request, route, start_response, limit_headers)
        response = self._send_with_retries(exchange, request, route, self._forward)
        if exchange.backend is not None and exchange.route is not None:  # sticky: Set-Cookie if moved
            cookie = self.balancer.cookie_headers(exchange.route, exchange.backend, environ)
            limit_headers = [*limit_headers, *cookie] if cookie else limit_headers
        return self._relay(exchange, response, start_response, limit_headers)

    def _note_limits(self, exchange: Exchange, route: Route, client_ip: str) -> None:
        """The limiter's verdict on this request as the first lookup gave it (for the log and metrics);
        decided in this worker when Redis could not and ``rateLimit.onError`` is ``local``."""
        exchange.verdict = self.limiter.verdict(route, client_ip)
        exchange.decision = limit_decision(exchange.verdict, self.limiter.enabled, True)
        if route.stale:
            self.metrics.route_lookup("stale")

    def _read_request(self, exchange: Exchange, target: str, host_header: str, host: str) -> ClientRequest:
        """The client, its request id and its body (refused here when too large, oddly coded or looping)."""
        environ = exchange.environ
        refuse_loop(environ, self.node_id)
        peer_trusted = trusted_peer(environ, self.trusted)
        exchange.client_ip = client_address(environ, self.trusted)
        exchange.request_id = request_id(environ, peer_trusted)
        body = request_body(environ, self.max_body)
        return ClientRequest(environ, environ["REQUEST_METHOD"], target, host_header, host,
                             exchange.client_ip, exchange.request_id, peer_trusted, body,
                             forwarded_via(environ, self.node_id))

    def _send_with_retries(self, exchange: Exchange, request: ClientRequest, route: Route,
                           send: SendStep) -> UpstreamResponse:
        """``send`` the request to a backend; on a connection failure count it against it and try another.

        The route is read again before each retry, so the new dead mark (and any
        change an operator made) is seen. A request is retried only while no backend
        can have acted on it (``may_retry``). The answer that comes back is reported to
        passive health whatever its status.
        """
        tried: list[str] = []
        last_error: BackendUnavailable | None = None
        while True:
            backend = exchange.backend = self._choose_backend(route, tried, last_error, request.environ)
            if backend.id in route.frontend.dead:
                self.metrics.panic()
            try:
                response = self._timed_attempt(exchange, send, request, backend)
            except BackendUnavailable as exc:
                self.metrics.upstream_error(exc)
                self.health.record_error(route, backend, exc)
                tried.append(backend.url)
                last_error = exc
                retries_done = len(tried) - 1
                if retries_done >= self.retries or not may_retry(exc, request.method, request.body):
                    raise
                exchange.retries = retries_done + 1
                log.info("%s: retrying on another backend (%d/%d) after: %s",
                         request.host, retries_done + 1, self.retries, exc.detail)
                route = exchange.route = self.router.resolve(request.host)
                continue
            self.health.check_answer(route, backend, response.status, response.headers)
            return response

    def _choose_backend(self, route: Route, tried: list[str], last_error: BackendUnavailable | None,
                        environ: dict[str, Any]) -> Backend:
        """A live backend not tried yet, by the frontend's policy; when none is left after a failure,
        that failure is the answer."""
        try:
            return self.health.choose(route, tried, self.balancer.picker(route, environ))
        except NoLiveBackend:
            if last_error is None:
                raise
            raise last_error from None

    def _timed_attempt(self, exchange: Exchange, send: SendStep, request: ClientRequest,
                       backend: Backend) -> UpstreamResponse:
        """One try on one backend; the time to its answer's head is recorded for the log."""
        headers = request.upstream_headers()
        held = exchange.route is not None and self.balancer.hold(exchange.route, backend.url)
        started = time.perf_counter()
        try:
            response = send(request, backend, headers)
        except BaseException:
            if held:
                self.balancer.release(backend.url)
            raise
        finally:
            exchange.upstream_time = time.perf_counter() - started
        exchange.held = backend.url if held else None  # in flight until the request ends
        return response

    def _forward(self, request: ClientRequest, backend: Backend, headers: Headers) -> UpstreamResponse:
        """The forward step: the request and its body to a pooled connection, up to the answer's head.

        The client's address (the rate limiter's) is what the pool's fair share counts.
        """
        return self.upstream.send(backend.url, request.method, request.target, headers, request.body,
                                  early_hints_relay(request.environ), request.environ.get("gunicorn.socket"),
                                  client_ip=request.client_ip)

    def _open_tunnel(self, request: ClientRequest, backend: Backend, headers: Headers) -> UpstreamResponse:
        """The tunnel's first step: the upgrade request, on a connection of its own."""
        return open_tunnel(self.upstream, backend.url, request.method, request.target, headers)

    def _tunnel(self, exchange: Exchange, request: ClientRequest, route: Route, start_response: StartResponse,
                limit_headers: Headers) -> Any:
        """A WebSocket upgrade: a ``101`` turns the connection into a tunnel, logged once it ends."""
        response = self._send_with_retries(exchange, request, route, self._open_tunnel)
        if response.status != 101:  # refused: an ordinary response, relayed as such
            return self._relay(exchange, response, start_response, limit_headers)
        exchange.status = 101
        self.metrics.tunnel(+1)
        try:
            outcome = run_tunnel(response, request.environ["gunicorn.socket"], self.ws_idle_timeout,
                                 self.ws_max_duration, request.host)
        finally:
            self.metrics.tunnel(-1)
        exchange.bytes_sent, exchange.extra = outcome.bytes_sent, outcome.log_field
        self.end_of_request(exchange)
        return ALREADY_HANDLED

    def _relay(self, exchange: Exchange, response: UpstreamResponse, start_response: StartResponse,
               extra_headers: Headers) -> Iterable[bytes]:
        """The backend's head now; its body as the server pulls it, the request ending with it."""
        headers = downstream_response_headers(response.headers)
        headers.extend(extra_headers)
        if wants_debug(self.debug, exchange.environ):
            headers.extend(debug_headers(exchange))
        exchange.status = response.status
        try:
            start_response(status_line(response.status, response.reason), headers)
        except Exception:
            response.close()
            raise
        return StreamedBody(exchange, response.iter_body(), response.close, self.end_of_request,
                            self.metrics.upstream_error)

    def end_of_request(self, exchange: Exchange) -> None:
        """Where every logged request ends, once its answer is out: one access-log line, its metrics."""
        if exchange.held is not None:
            self.balancer.release(exchange.held)
            exchange.held = None
        self.access_log.write(access_entry(exchange))
        self._measure(exchange)

    def _measure(self, exchange: Exchange) -> None:
        route = exchange.route
        self.metrics.finished(exchange.status, time.perf_counter() - exchange.started, exchange.upstream_time,
                              route.identifier if route else None, exchange.retries,
                              exchange.verdict, exchange.decision)

    # ---------------------------------------------------------------- answers

    def _answer_ping(self, exchange: Exchange, start_response: StartResponse) -> list[bytes]:
        """``Host: __ping__``, a load balancer's liveness check: no Redis, no backend, no log line."""
        body = b"ok"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        exchange.answered(200, len(body))
        self._measure(exchange)  # not logged, but counted
        return [body]

    def _answer_redirect(self, exchange: Exchange, start_response: StartResponse,
                         redirect: tuple[str, Headers, bytes]) -> list[bytes]:
        """``https.redirectHttp``: the same URL over HTTPS, before any routing (and logged)."""
        status, headers, body = redirect
        start_response(status, headers)
        exchange.answered(int(status[:3]), len(body))
        self.end_of_request(exchange)
        return [body]

    def _answer_error(self, exchange: Exchange, start_response: StartResponse,
                      error: ProxyError) -> list[bytes]:
        """The one place a ``ProxyError`` becomes a response (and a log line)."""
        if (error.status >= 500 or error.status == 499) and not error.logged:
            log.warning("%s %s (host %s): %s", error.status, type(error).__name__,
                        exchange.environ.get("HTTP_HOST"), error.detail)
        status, headers, body = self.pages.response(error.status, error.detail)
        headers.extend(error.headers)
        if wants_debug(self.debug, exchange.environ):
            headers.extend(error_debug_headers(exchange, error.detail))
        exchange.answered(error.status, len(body))
        start_response(status, headers)
        self.end_of_request(exchange)
        return [body]

    # ------------------------------------------------------------------- worker

    def reopen_logs(self) -> None:
        self.access_log.reopen()

    def close(self) -> None:
        self.upstream.close()
        self.router.store.close()
        self.access_log.close()


def may_retry(error: BackendUnavailable, method: str, body: RequestBody | None) -> bool:
    """True while no backend can have acted on the request, so another one may be asked.

    Nothing was sent (connection refused): any method, as long as no body byte was
    consumed (it could not be sent again) or the whole body was read beforehand. The request may have arrived: only an
    idempotent method without a body, and never after a timeout (the backend may
    still be working on it).
    """
    if error.before_request:
        return body is None or body.sent == 0 or body.replayable
    return method in IDEMPOTENT and body is None and not isinstance(error, BackendTimeout)


# ---------------------------------------------------------------------- factory


def create_app(settings: config.Settings) -> ProxyApp:
    """Build a worker's proxy: each collaborator from its own typed view of the settings."""
    read_url, write_url = config.driver_urls(settings)
    routing, health_view = view(RoutingSettings, settings), view(HealthSettings, settings)
    balance = view(BalanceSettings, settings)
    pool, logs, monitoring = view(UpstreamSettings, settings), view(AccessLogSettings, settings), \
        view(MetricsSettings, settings)
    metrics = build_metrics(bool(config.admin_addresses(settings)), monitoring.per_frontend, monitoring.max_frontends)
    store = MeasuredStore.measured(
        RouteStore.from_urls(read_url, write_url, routing.redis_timeout, REDIS_POOL_SIZE, coalesce=True), metrics)
    cache = MeasuredRouteCache(InvalidationFeed(read_url, routing.redis_timeout)) if routing.route_cache else None
    if cache is not None:
        cache.metrics = metrics
    router = Router(store, routing.stale_route_ttl, cache=cache)
    health = BackendHealth(store, health_view.dead_ttl, health_view.dead_on_500, dead_after=health_view.dead_after)
    upstream = Upstream(make_session(pool.max_sockets), connect_timeout=pool.connect_timeout or pool.tcp_timeout,
                        read_timeout=pool.tcp_timeout, deny=parse_networks(pool.deny_backends),
                        max_tunnels=pool.ws_per_backend, per_client=pool.max_sockets_per_client,
                        spools=SpoolBudget.configured(pool.spool_max_bytes, pool.spool_bytes_per_worker))
    return ProxyApp(view(ProxySettings, settings), router, RateLimiter(settings), health, upstream,
                    ErrorPages(logs.static_dir), AccessLog(logs.path, logs.format), metrics,
                    https_port=https_redirect_port(settings),
                    balancer=Balancer(balance.default, balance.sticky_cookie, (balance.sticky_secret or "").encode()))


def build_application(settings: config.Settings) -> ProxyApp:
    """This process's ``application``: built on the first call, the same app on every later one.

    Stored as the module attribute gunicorn reads, so however often ``application`` is
    read, a worker has one router, one set of pools and one access-log descriptor.
    """
    built = globals().get("application")
    if isinstance(built, ProxyApp):
        return built
    app = create_app(settings)
    globals()["application"] = app
    return app


def __getattr__(name: str) -> Any:
    """``application`` read before the worker class built it (another server, a shell):
    built once from the config file, since no master handed settings over."""
    if name == "application":
        return build_application(config.load_settings())
    raise AttributeError(name)
