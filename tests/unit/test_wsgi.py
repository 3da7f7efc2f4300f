"""The request pipeline in process: ``ProxyApp`` with hand-written fakes around it.

No Redis, no backend, no gunicorn: the router, limiter, health, upstream and access log
are small fakes handed to the constructor, and the app is called as a WSGI server
would call it. Each test runs in milliseconds.
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import gevent.socket
import pytest
from gunicorn.workers.base_async import ALREADY_HANDLED

from cjs_proxy import config
from cjs_proxy.config.views import ProxySettings, view
from cjs_proxy.exceptions import (
    BackendBusy,
    BackendClosed,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    InvalidHost,
    LimiterUnavailable,
    NoLiveBackend,
    ProxyError,
    RateLimited,
    StoreUnavailable,
    UnknownHost,
)
from cjs_proxy.pipeline.accesslog import AccessEntry
from cjs_proxy.pipeline.error_pages import ErrorPages
from cjs_proxy.pipeline.http1 import UpstreamBroken
from cjs_proxy.pipeline.passive_health import Backend
from cjs_proxy.pipeline.redirect import https_redirect_port
from cjs_proxy.pipeline.router import Route
from cjs_proxy.pipeline.store import Frontend
from cjs_proxy.pipeline.upstream import RequestBody
from cjs_proxy.wsgi import ProxyApp, may_retry

HOST = "app.test"
BACKENDS = ("http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003")


# ------------------------------------------------------------------------ fakes


def route_for(host: str = HOST, backends: tuple[str, ...] = BACKENDS, identifier: str = "my-app") -> Route:
    return Route(host, Frontend(f"frontend:{host}", identifier, backends, frozenset()))


class FakeStore:
    closed = False

    def close(self) -> None:
        self.closed = True


class FakeRouter:
    """Routes from a dict; an exception in it is raised by ``resolve``."""

    def __init__(self, routes: dict[str, Route | Exception]) -> None:
        self.routes = routes
        self.resolved: list[str] = []
        self.store = FakeStore()

    def resolve(self, host: str, limit_args: tuple[str, ...] | None = None) -> Route:
        self.resolved.append(host)
        found = self.routes.get(host, UnknownHost(host))
        if isinstance(found, Exception):
            raise found
        return found


class FakeLimiter:
    """Limits off (no verdict from Redis); ``check`` answers the headers or raises as told."""

    enabled = False

    def __init__(self, outcome: list[tuple[str, str]] | Exception | None = None) -> None:
        self.outcome = outcome or []

    def script_args(self, client_ip: str) -> tuple[str, ...] | None:
        return None

    def verdict(self, route: Route, client_ip: str | None = None) -> None:
        return None

    def check(self, route: Route, client_ip: str, verdict: None = None) -> list[tuple[str, str]]:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return list(self.outcome)


class FakeHealth:
    """Picks the backends in order, skipping those already tried; records what it is told."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, str]] = []
        self.answers: list[tuple[str, int]] = []

    def choose(self, route: Route, tried: Iterable[str] = (), pick: object = None) -> Backend:
        for backend_id, url in enumerate(route.backends):
            if url not in tried:
                return Backend(backend_id, url)
        raise NoLiveBackend(f"{route.host}: no backend left")

    def record_error(self, route: Route, backend: Backend, error: BackendUnavailable) -> None:
        self.failures.append((backend.url, error.detail))

    def check_answer(self, route: Route, backend: Backend, status: int, headers: list[tuple[str, str]]) -> None:
        self.answers.append((backend.url, status))


class FakeHead:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw


class FakeResponse:
    """A backend's answer: a head and body chunks; an exception among them breaks the body."""

    def __init__(self, status: int = 200, body: Iterable[bytes | Exception] = (b"hello",),
                 headers: list[tuple[str, str]] | None = None, reason: str = "OK") -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else [("Content-Type", "text/plain")]
        self.body = list(body)
        self.head = FakeHead(f"HTTP/1.1 {status} {reason}\r\n\r\n".encode())
        self.closed = False
        self.tunnel_to: Any = None

    def iter_body(self) -> Iterator[bytes]:
        for chunk in self.body:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    def detach(self) -> tuple[Any, bytes]:
        """After a ``101``: the backend socket (``tunnel_to``) and what it sent after the head."""
        self.closed = True
        return self.tunnel_to, b"early"

    def close(self) -> None:
        self.closed = True

    def release_slot(self) -> None:
        self.released = True


class FakeUpstream:
    """Answers per backend URL, in order: a ``FakeResponse`` or an exception to raise.

    ``consume`` bytes of the request body are read before answering, as a backend that
    started to receive the body would.
    """

    def __init__(self, outcomes: dict[str, list[FakeResponse | Exception]] | None = None,
                 consume: int = 0) -> None:
        self.outcomes = outcomes or {}
        self.consume = consume
        self.sent: list[tuple[str, str, str, list[tuple[str, str]]]] = []
        #: The client address each request was sent for (what the pools' fair share counts).
        self.client_ips: list[str | None] = []
        self.closed = False

    def send(self, backend_url: str, method: str, target: str, headers: list[tuple[str, str]],
             body: Any, early_hints: Any = None, client: Any = None, client_ip: str | None = None) -> FakeResponse:
        self.sent.append((backend_url, method, target, headers))
        self.client_ips.append(client_ip)
        if body is not None and self.consume:
            for _chunk in body:
                if body.sent >= self.consume:
                    break
        queue = self.outcomes.get(backend_url) or [FakeResponse()]
        outcome = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def open_upgrade(self, backend_url: str, method: str, target: str, headers: list[tuple[str, str]],
                     protocol: str) -> FakeResponse:
        return self.send(backend_url, method, target, headers, None)

    def close(self) -> None:
        self.closed = True


class FakeAccessLog:
    def __init__(self) -> None:
        self.entries: list[AccessEntry] = []

    def write(self, entry: AccessEntry) -> None:
        self.entries.append(entry)

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


class StartResponse:
    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        self.status, self.headers = status, headers

    @property
    def code(self) -> int:
        assert self.status is not None
        return int(self.status[:3])

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class Pipeline:
    """A ``ProxyApp`` built from fakes, with the fakes kept at hand for the assertions."""

    def __init__(self, settings: dict[str, Any] | None = None, routes: dict[str, Route | Exception] | None = None,
                 upstream: FakeUpstream | None = None, limiter: FakeLimiter | None = None) -> None:
        self.settings = config.parse_settings(settings or {})
        self.router = FakeRouter({HOST: route_for()} if routes is None else routes)
        self.limiter = limiter or FakeLimiter()
        self.health = FakeHealth()
        self.upstream = upstream or FakeUpstream()
        self.access_log = FakeAccessLog()
        self.app = ProxyApp(view(ProxySettings, self.settings), self.router, self.limiter,  # type: ignore[arg-type]
                            self.health, self.upstream, ErrorPages(None), self.access_log,  # type: ignore[arg-type]
                            https_port=https_redirect_port(self.settings))

    def request(self, method: str = "GET", target: str = "/path?q=1", host: str | None = HOST,
                body: bytes = b"", **extra: Any) -> tuple[StartResponse, bytes]:
        """Call the app as gunicorn does: iterate the body, then ``close()`` it."""
        start = StartResponse()
        result = self.app(environ(method, target, host, body, **extra), start)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return start, data

    @property
    def logged(self) -> AccessEntry:
        assert len(self.access_log.entries) == 1, self.access_log.entries
        return self.access_log.entries[0]


def environ(method: str = "GET", target: str = "/", host: str | None = HOST, body: bytes = b"",
            **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method, "RAW_URI": target, "PATH_INFO": target.split("?")[0],
        "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_PORT": "8080", "REMOTE_ADDR": "192.0.2.7",
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
    }
    if host is not None:
        env["HTTP_HOST"] = host
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
    env.update(extra)
    return env


def page(status: int, detail: str = "") -> bytes:
    return ErrorPages(None).response(status, detail)[2]


# ----------------------------------------------------------------- forwarding


def test_a_request_is_forwarded_and_its_answer_relayed() -> None:
    pipeline = Pipeline()
    start, body = pipeline.request()
    assert (start.code, body) == (200, b"hello")
    url, method, target, headers = pipeline.upstream.sent[0]
    assert (url, method, target) == (BACKENDS[0], "GET", "/path?q=1")
    assert ("Host", HOST) in headers and ("X-Forwarded-For", "192.0.2.7") in headers
    assert pipeline.health.answers == [(BACKENDS[0], 200)]


def test_the_pools_count_a_request_against_the_rate_limiters_client_address() -> None:
    """The fair share of a pool (``fair_share``) is per client address: the one the limiter uses."""
    direct = Pipeline()
    direct.request(HTTP_X_FORWARDED_FOR="203.0.113.9")  # an untrusted peer's header is not believed
    behind = Pipeline({"server": {"trustedProxies": ["192.0.2.0/24"]}})
    behind.request(HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.4")
    assert direct.upstream.client_ips == ["192.0.2.7"]
    assert behind.upstream.client_ips == ["198.51.100.4"]


def test_the_access_log_records_status_bytes_upstream_and_vhost() -> None:
    pipeline = Pipeline(upstream=FakeUpstream({BACKENDS[0]: [FakeResponse(201, [b"abc", b"defg"])]}))
    pipeline.request("POST", "/items", body=b"x=1")
    entry = pipeline.logged
    assert (entry.status, entry.bytes_sent, entry.upstream, entry.vhost) == (201, 7, "127.0.0.1:9001", "my-app")
    assert (entry.method, entry.uri, entry.protocol, entry.remote_addr) == ("POST", "/items", "HTTP/1.1", "192.0.2.7")
    assert entry.upstream_time is not None and entry.request_time >= entry.upstream_time
    assert entry.request_id != "-" and entry.extra == ""


def test_the_exchange_is_logged_when_the_body_is_done_not_before() -> None:
    pipeline = Pipeline()
    start = StartResponse()
    result = pipeline.app(environ(), start)
    assert pipeline.access_log.entries == []
    assert b"".join(result) == b"hello"
    result.close()  # type: ignore[attr-defined]
    assert pipeline.logged.bytes_sent == 5


def test_the_backend_connection_is_released_when_the_body_is_done() -> None:
    response = FakeResponse()
    pipeline = Pipeline(upstream=FakeUpstream({BACKENDS[0]: [response]}))
    pipeline.request()
    assert response.closed


# ---------------------------------------------------------------------- retries


def test_a_connection_failure_is_retried_on_another_backend() -> None:
    refused = BackendUnavailable("connection refused", before_request=True)
    pipeline = Pipeline(upstream=FakeUpstream({BACKENDS[0]: [refused]}))
    start, body = pipeline.request()
    assert (start.code, body) == (200, b"hello")
    assert [sent[0] for sent in pipeline.upstream.sent] == [BACKENDS[0], BACKENDS[1]]
    assert pipeline.health.failures == [(BACKENDS[0], "connection refused")]
    assert pipeline.router.resolved == [HOST, HOST], "the route is read again before a retry"
    assert pipeline.logged.upstream == "127.0.0.1:9002"


def test_retries_stop_at_server_retry_on_error() -> None:
    refused = BackendUnavailable("connection refused", before_request=True)
    upstream = FakeUpstream({url: [refused] for url in BACKENDS})
    pipeline = Pipeline({"server": {"retryOnError": 1}}, upstream=upstream)
    start, _ = pipeline.request()
    assert start.code == 502
    assert [sent[0] for sent in upstream.sent] == [BACKENDS[0], BACKENDS[1]]


def test_when_every_backend_failed_the_last_failure_is_the_answer() -> None:
    upstream = FakeUpstream({BACKENDS[0]: [BackendUnavailable("refused", before_request=True)],
                             BACKENDS[1]: [BackendTimeout("no answer in 5s", before_request=True)]})
    pipeline = Pipeline({"server": {"retryOnError": 5}},
                        routes={HOST: route_for(backends=BACKENDS[:2])}, upstream=upstream)
    start, body = pipeline.request()
    assert (start.code, body) == (504, page(504, "no answer in 5s"))
    assert len(pipeline.health.failures) == 2


def test_a_route_without_backends_is_a_502_not_a_retry() -> None:
    pipeline = Pipeline(routes={HOST: route_for(backends=())})
    start, _ = pipeline.request()
    assert start.code == 502 and pipeline.upstream.sent == []


@pytest.mark.parametrize(("method", "error", "body", "consumed", "retried"), [
    # Before anything was sent: any method, as long as no body byte was consumed.
    ("POST", BackendUnavailable("refused", before_request=True), b"", 0, True),
    ("POST", BackendUnavailable("refused", before_request=True), b"data", 0, True),
    ("POST", BackendClosed("closed idle", before_request=True), b"data" * 30000, 65536, False),
    # After the request may have reached the backend: idempotent methods without a body.
    ("GET", BackendUnavailable("reset"), b"", 0, True),
    ("PUT", BackendUnavailable("reset"), b"", 0, True),
    ("DELETE", BackendProtocolError("bad framing"), b"", 0, True),
    ("POST", BackendUnavailable("reset"), b"", 0, False),
    ("PATCH", BackendUnavailable("reset"), b"", 0, False),
    ("PUT", BackendUnavailable("reset"), b"data", 0, False),
    # A timeout: the backend may still be working on it.
    ("GET", BackendTimeout("slow"), b"", 0, False),
    ("GET", BackendTimeout("connect timeout", before_request=True), b"", 0, True),
])
def test_may_retry_only_what_no_backend_can_have_acted_on(method: str, error: BackendUnavailable, body: bytes,
                                                          consumed: int, retried: bool) -> None:
    pipeline = Pipeline(upstream=FakeUpstream({BACKENDS[0]: [error]}, consume=consumed))
    start, _ = pipeline.request(method, body=body)
    assert (len(pipeline.upstream.sent) == 2) is retried
    assert start.code == (200 if retried else error.status)


@pytest.mark.parametrize(("error", "method", "body_sent", "expected"), [
    (BackendUnavailable("refused", before_request=True), "POST", None, True),
    (BackendUnavailable("refused", before_request=True), "POST", 0, True),
    (BackendUnavailable("refused", before_request=True), "POST", 10, False),
    (BackendUnavailable("reset"), "GET", None, True),
    (BackendUnavailable("reset"), "OPTIONS", None, True),
    (BackendUnavailable("reset"), "GET", 0, False),
    (BackendUnavailable("reset"), "POST", None, False),
    (BackendTimeout("slow"), "GET", None, False),
])
def test_may_retry(error: BackendUnavailable, method: str, body_sent: int | None, expected: bool) -> None:
    body = None
    if body_sent is not None:
        body = RequestBody(io.BytesIO(b"x" * 20), 20)
        body.sent = body_sent
    assert may_retry(error, method, body) is expected


# --------------------------------------------------------------- error mapping


@pytest.mark.parametrize(("stage", "error", "status"), [
    ("router", UnknownHost("no frontend"), 400),
    ("router", InvalidHost("bad host"), 400),
    ("router", StoreUnavailable("redis down"), 503),
    ("limiter", RateLimited("over"), 429),
    ("limiter", LimiterUnavailable("redis down"), 503),
    ("upstream", BackendUnavailable("reset"), 502),
    ("upstream", BackendProtocolError("two Content-Length"), 502),
    ("upstream", BackendTimeout("slow"), 504),
    ("upstream", BackendBusy("maxSockets"), 503),
])
def test_each_proxy_error_is_its_status_and_page(stage: str, error: ProxyError, status: int) -> None:
    routes: dict[str, Route | Exception] = {HOST: error if stage == "router" else route_for()}
    limiter = FakeLimiter(error if stage == "limiter" else None)
    upstream = FakeUpstream({url: [error] for url in BACKENDS} if stage == "upstream" else None)
    pipeline = Pipeline({"server": {"retryOnError": 0}}, routes=routes, upstream=upstream, limiter=limiter)
    start, body = pipeline.request("POST")
    assert (start.code, body) == (status, page(status, error.detail))
    assert start.header("Content-Type") is not None
    assert (pipeline.logged.status, pipeline.logged.bytes_sent) == (status, len(body))


def test_an_error_carries_its_own_headers() -> None:
    limited = RateLimited("over")
    limited.headers.append(("Retry-After", "3"))
    pipeline = Pipeline(limiter=FakeLimiter(limited))
    start, _ = pipeline.request()
    assert (start.code, start.header("Retry-After")) == (429, "3")


def test_a_refused_body_is_logged_with_its_client_and_request_id() -> None:
    pipeline = Pipeline({"server": {"maxRequestBodySize": 2, "trustedProxies": ["192.0.2.0/24"]}})
    start, _ = pipeline.request("POST", body=b"too long", HTTP_X_FORWARDED_FOR="198.51.100.1",
                                HTTP_X_REQUEST_ID="req-1")
    assert start.code == 413 and pipeline.router.resolved == []
    assert (pipeline.logged.remote_addr, pipeline.logged.request_id) == ("198.51.100.1", "req-1")


def test_an_unexpected_exception_is_a_500_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline(routes={HOST: RuntimeError("a bug")})
    with caplog.at_level(logging.ERROR, logger="cjs_proxy"):
        start, body = pipeline.request("GET", "/where")
    assert (start.code, body) == (500, page(500, "RuntimeError: a bug"))
    assert any("unexpected error handling GET /where" in r.getMessage() and r.exc_info for r in caplog.records)
    assert pipeline.logged.status == 500


def test_server_errors_are_logged_once_client_errors_not(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cjs_proxy"):
        Pipeline(routes={HOST: UnknownHost("nope")}).request()
        assert caplog.records == []
        Pipeline(upstream=FakeUpstream({url: [BackendBusy("full")] for url in BACKENDS})).request()
    assert [r.getMessage() for r in caplog.records] == [f"503 BackendBusy (host {HOST}): full"]


# ------------------------------------------------------------ answers of its own


def test_the_ping_host_is_answered_without_routing_or_logging() -> None:
    pipeline = Pipeline()
    start, body = pipeline.request(host="__ping__")
    assert (start.code, body) == (200, b"ok")
    assert pipeline.router.resolved == [] and pipeline.upstream.sent == []
    assert pipeline.access_log.entries == []


def test_connect_is_answered_405() -> None:
    pipeline = Pipeline()
    start, body = pipeline.request("CONNECT", "app.test:443")
    assert (start.code, body) == (405, page(405, "CONNECT: this is a reverse proxy, not a tunnel"))
    assert start.header("Allow") is not None
    assert pipeline.router.resolved == [] and pipeline.logged.status == 405


def test_plain_http_is_redirected_to_https_when_asked() -> None:
    pipeline = Pipeline({"https": {"bind": [{"address": "127.0.0.1", "port": 8443}], "redirectHttp": True,
                                   "cert": "/nonexistent.crt", "key": "/nonexistent.key"}})
    start, body = pipeline.request(target="/a?b=c", host="App.Test:8080")
    assert (start.code, start.header("Location")) == (301, "https://app.test:8443/a?b=c")
    assert body == b"Moved to https://app.test:8443/a?b=c\n"
    assert pipeline.router.resolved == []
    assert (pipeline.logged.status, pipeline.logged.bytes_sent, pipeline.logged.vhost) == (301, len(body), "-")


def test_debug_headers_describe_the_route_and_the_backend() -> None:
    pipeline = Pipeline({"server": {"debug": True}})
    start, _ = pipeline.request(HTTP_X_DEBUG="1")
    assert start.header("x-debug-vhost") == "my-app"
    assert start.header("x-debug-frontend-key") == f"frontend:{HOST}"
    assert (start.header("x-debug-backend-url"), start.header("x-debug-backend-id")) == (BACKENDS[0], "0")
    assert start.header("x-debug-time-total") is not None and start.header("x-debug-time-backend") is not None


def test_debug_headers_on_an_error_name_it() -> None:
    pipeline = Pipeline({"server": {"debug": True, "retryOnError": 0}},
                        upstream=FakeUpstream({url: [BackendTimeout("slow")] for url in BACKENDS}))
    start, _ = pipeline.request(HTTP_X_DEBUG="1")
    assert (start.code, start.header("x-debug-error"), start.header("x-debug-backend-id")) == (504, "slow", "0")


def test_no_debug_headers_unless_server_debug() -> None:
    start, _ = Pipeline().request(HTTP_X_DEBUG="1")
    assert not any(name.startswith("x-debug") for name, _ in start.headers)


# ------------------------------------------------------------- a broken backend


def test_a_body_cut_short_by_the_backend_resets_the_client() -> None:
    """The client connection gets an RST, never a clean end it could take for a full body."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
    broken = FakeResponse(200, [b"first part", UpstreamBroken("backend closed mid-body")])
    pipeline = Pipeline(upstream=FakeUpstream({BACKENDS[0]: [broken]}))
    start = StartResponse()
    result = pipeline.app(environ(**{"gunicorn.socket": served}), start)
    chunks = iter(result)
    assert next(chunks) == b"first part"
    with pytest.raises(ConnectionResetError):
        next(chunks)
    result.close()  # type: ignore[attr-defined]
    assert served.fileno() == -1 and broken.closed
    client.settimeout(2)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    client.close()
    assert (pipeline.logged.status, pipeline.logged.bytes_sent) == (200, len(b"first part"))


# -------------------------------------------------------------------- websockets

UPGRADE = {"HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade"}


def test_a_websocket_upgrade_becomes_a_tunnel_logged_once_it_ends() -> None:
    client, client_peer = gevent.socket.socketpair()
    backend, backend_peer = gevent.socket.socketpair()
    switching = FakeResponse(101, [], reason="Switching Protocols")
    switching.tunnel_to = backend
    pipeline = Pipeline(upstream=FakeUpstream({BACKENDS[0]: [switching]}))
    client_peer.sendall(b"ping")
    client_peer.shutdown(socket.SHUT_WR)
    backend_peer.sendall(b"pong")
    backend_peer.shutdown(socket.SHUT_WR)
    start = StartResponse()
    result = pipeline.app(environ(**UPGRADE, **{"gunicorn.socket": client}), start)
    assert result is ALREADY_HANDLED and start.status is None
    _, _, _, headers = pipeline.upstream.sent[0]
    assert ("Connection", "Upgrade") in headers and ("Upgrade", "websocket") in headers
    assert read_all(client_peer) == switching.head.raw + b"early" + b"pong"
    assert read_all(backend_peer) == b"ping"
    entry = pipeline.logged
    assert (entry.status, entry.bytes_sent, entry.vhost) == (101, len(b"earlypong"), "my-app")
    assert entry.extra.startswith("ws=4/9 ")


def test_a_refused_upgrade_is_relayed_as_an_ordinary_answer() -> None:
    client, _client_peer = gevent.socket.socketpair()
    refused = FakeResponse(403, [b"no"], reason="Forbidden")
    pipeline = Pipeline(upstream=FakeUpstream({BACKENDS[0]: [refused]}))
    start, body = pipeline.request(**UPGRADE, **{"gunicorn.socket": client})
    assert (start.code, body) == (403, b"no")
    assert (pipeline.logged.status, pipeline.logged.extra) == (403, "")


def test_opening_a_tunnel_is_retried_on_another_backend() -> None:
    client, _client_peer = gevent.socket.socketpair()
    refused = BackendUnavailable("connection refused", before_request=True)
    pipeline = Pipeline(upstream=FakeUpstream({BACKENDS[0]: [refused], BACKENDS[1]: [FakeResponse(404, [])]}))
    start, _ = pipeline.request(**UPGRADE, **{"gunicorn.socket": client})
    assert start.code == 404 and pipeline.logged.upstream == "127.0.0.1:9002"


def read_all(sock: Any) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# ----------------------------------------------------------------- the app itself


def test_close_releases_the_collaborators() -> None:
    pipeline = Pipeline()
    pipeline.app.close()
    assert pipeline.upstream.closed and pipeline.router.store.closed


def test_the_application_is_built_once_however_often_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from cjs_proxy import wsgi

    monkeypatch.delitem(wsgi.__dict__, "application", raising=False)  # this process's app, if any
    settings = config.parse_settings({"driver": "redis://127.0.0.1:1", "server": {"accessLog": None}})
    built = wsgi.build_application(settings)
    try:
        assert wsgi.application is built and wsgi.application is wsgi.application
        assert wsgi.build_application(settings) is built
    finally:
        built.close()
        del wsgi.application
