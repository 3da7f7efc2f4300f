"""Forwarding through the real proxy: methods, bodies, headers, framing, errors.

Every test talks to real processes (redis-server, tests/backend.py, gunicorn) over
loopback. ``/echo`` on the backend reports what actually arrived there, so header
and body assertions are about the bytes the proxy forwarded, not about its code.
Framing cases use raw sockets, since ``requests`` would never send them.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import select
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests.harness import ANSWER_TIMEOUT, ROOT, free_port

TIMEOUT = ANSWER_TIMEOUT


def page_title(status: int) -> str:
    """The <title> of the bundled error page for ``status``."""
    html = (ROOT / "errors" / f"{status}.html").read_text()
    found = re.search(r"<title>(.*?)</title>", html)
    assert found, f"errors/{status}.html has no <title>"
    return found.group(1)


def echo(proxy_url: str, host: str, method: str = "GET", path: str = "/echo",
         session: requests.Session | None = None, **kwargs) -> dict:
    """Send through the proxy to ``/echo`` and return the backend's report."""
    sender = session or requests.Session()
    try:
        response = sender.request(method, f"{proxy_url}{path}", headers={"Host": host, **kwargs.pop("headers", {})},
                                  timeout=TIMEOUT, **kwargs)
    finally:
        if session is None:
            sender.close()
    assert response.status_code == 200, response.text[:500]
    return response.json()


def received(report: dict, name: str) -> list[str]:
    """Every value of header ``name`` as the backend received it."""
    return [value for key, value in report["headers"] if key.lower() == name.lower()]


class RawConnection:
    """One client connection on a raw socket that reads responses one at a time."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.closed = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_head(self) -> tuple[int, list[tuple[str, str]]]:
        """The status code and header list of the next response."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert re.fullmatch(r"HTTP/1\.[01] \d{3}( .*)?", lines[0]), f"not a status line: {lines[0]!r}"
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        return int(lines[0].split()[1]), headers

    def read_response(self, method: str = "GET") -> tuple[int, list[tuple[str, str]], bytes]:
        """The next response, its body framed by Content-Length or chunked."""
        status, headers = self.read_head()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        return status, headers, self.read_body(headers)

    def read_body(self, headers: list[tuple[str, str]]) -> bytes:
        """The body after a head already read, by the framing it declares (chunked or length)."""
        values = {name.lower(): value for name, value in headers}
        if "chunked" in values.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    return body
                body += self._take(size)
                assert self._take(2) == b"\r\n"
        if "content-length" in values:
            return self._take(int(values["content-length"]))
        raise AssertionError(f"response without framing on a keep-alive connection: {headers}")

    def pending(self, wait: float = 0.3) -> bytes:
        """Whatever arrives within ``wait`` seconds; sets ``closed`` if the server closes."""
        deadline = time.monotonic() + wait
        while not self.closed and time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                try:
                    self._fill()
                except EOFError:
                    self.closed = True
        data, self.buffer = self.buffer, b""
        return data


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


@pytest.fixture()
def route(rdb, backends, host) -> str:
    """``host`` routed to backend "a"."""
    rdb.rpush(f"frontend:{host}", "forwarding-app", backends[0].url)
    return host


# --------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_method_and_body_reach_backend(proxy, route, method):
    body = f"body of a {method} request ".encode() * 50
    report = echo(proxy.url, route, method, data=body)
    assert report["method"] == method
    assert report["body_length"] == len(body)
    assert report["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert received(report, "Content-Length") == [str(len(body))]


def test_head_reaches_backend_and_returns_no_body(proxy, route):
    response = requests.head(f"{proxy.url}/bytes/100000", headers={"Host": route}, timeout=TIMEOUT)
    assert response.status_code == 200
    # HEAD keeps the Content-Length the GET would have (RFC 9110 9.3.2).
    assert response.headers["Content-Length"] == "100000"
    assert response.content == b""


@pytest.mark.parametrize("method, path, status", [
    ("HEAD", "/echo", 200),
    ("HEAD", "/bytes/100000", 200),
    ("GET", "/status/204", 204),
    ("GET", "/status/304", 304),
])
def test_bodiless_responses_leave_connection_usable(proxy, route, method, path, status):
    """Nothing follows the headers, and the next response on the connection parses."""
    with RawConnection(proxy.port) as conn:
        conn.send(f"{method} {path} HTTP/1.1\r\nHost: {route}\r\n\r\n".encode())
        got, headers = conn.read_head()
        assert got == status
        assert header(headers, "Transfer-Encoding") == []
        if status == 204:
            assert header(headers, "Content-Length") == []
        assert conn.pending(0.4) == b"", "bytes followed the headers of a bodiless response"
        conn.send(f"GET /echo?second=1 HTTP/1.1\r\nHost: {route}\r\n\r\n".encode())
        got, _, body = conn.read_response()
        assert got == 200
        assert b'"path": "/echo?second=1"' in body


# ----------------------------------------------------------- request headers


def test_forwarded_headers(proxy, route):
    report = echo(proxy.url, route, headers={
        "X-Forwarded-For": "203.0.113.7", "X-Real-IP": "198.51.100.66",
        "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443", "X-Request-ID": "client-chosen"})
    assert received(report, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert received(report, "X-Real-IP") == ["127.0.0.1"], "client-sent X-Real-IP must be replaced"
    assert received(report, "X-Forwarded-Proto") == ["http"]
    assert received(report, "X-Forwarded-Port") == [str(proxy.port)]
    request_ids = received(report, "X-Request-ID")
    assert len(request_ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", request_ids[0]), request_ids


def test_forwarded_headers_without_client_values(proxy, route):
    first = echo(proxy.url, route)
    second = echo(proxy.url, route)
    assert received(first, "X-Forwarded-For") == ["127.0.0.1"]
    assert received(first, "X-Real-IP") == ["127.0.0.1"]
    assert received(first, "X-Request-ID") != received(second, "X-Request-ID")


def test_host_passes_unchanged_with_port(proxy, route):
    report = echo(proxy.url, f"{route}:8080")
    assert received(report, "Host") == [f"{route}:8080"]


def test_hop_by_hop_request_headers_are_not_forwarded(proxy, route):
    report = echo(proxy.url, route, headers={
        "Connection": "keep-alive, X-Foo", "X-Foo": "secret", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Trailer": "X-Checksum", "Upgrade": "h2c",
        "Proxy-Authorization": "Basic dXNlcjpwYXNz", "X-End-To-End": "kept"})
    names = {name.lower() for name, _ in report["headers"]}
    for hop in ("x-foo", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"):
        assert hop not in names, f"{hop} reached the backend: {report['headers']}"
    assert all("x-foo" not in value.lower() for value in received(report, "Connection"))
    assert received(report, "X-End-To-End") == ["kept"]


# ---------------------------------------------------------- response headers


def test_hop_by_hop_response_headers_are_not_relayed(proxy, route):
    response = requests.get(f"{proxy.url}/hop", headers={"Host": route}, timeout=TIMEOUT)
    assert response.status_code == 200
    names = {name.lower() for name in response.raw.headers}
    for hop in ("x-secret-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert hop not in names, f"{hop} reached the client: {dict(response.raw.headers)}"
    assert "x-secret-hop" not in response.headers.get("Connection", "").lower()
    assert response.headers["X-End-To-End"] == "kept"
    assert response.content == b"hop\n"


def test_backend_server_and_date_are_replaced(proxy, route):
    """The client sees the proxy's Server and Date, once each; nginx does the same
    (``proxy_hide_header`` hides a backend's Server and Date by default)."""
    response = requests.get(f"{proxy.url}/echo", headers={"Host": route}, timeout=TIMEOUT)
    servers = response.raw.headers.getlist("Server")
    assert len(servers) == 1 and "TestBackend" not in servers[0], servers
    assert len(response.raw.headers.getlist("Date")) == 1


def test_gzip_body_passes_byte_exact(proxy, route):
    expected = gzip.compress(b"compressed payload " * 100, mtime=0)
    response = requests.get(f"{proxy.url}/gzip", headers={"Host": route, "Accept-Encoding": "gzip"},
                            timeout=TIMEOUT, stream=True)
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Length"] == str(len(expected))
    assert response.raw.read(decode_content=False) == expected


def test_redirect_reaches_client_unfollowed(proxy, route):
    response = requests.get(f"{proxy.url}/redirect", headers={"Host": route}, timeout=TIMEOUT,
                            allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"] == "/elsewhere"
    assert response.content == b"moved\n"


# ------------------------------------------------------------------- cookies


def test_cookies_do_not_leak_between_clients(proxy, route):
    with requests.Session() as client1, requests.Session() as client2:
        set_cookie = client1.get(f"{proxy.url}/cookie?v=one", headers={"Host": route}, timeout=TIMEOUT)
        assert set_cookie.status_code == 200
        assert client1.cookies.get("session") == "one"
        # Control: the client's own cookie does travel through the proxy...
        own = echo(proxy.url, route, session=client1)
        assert any("session=one" in value for value in received(own, "Cookie"))
        # ...but nobody else's.
        for _ in range(4):  # both workers of the shared proxy
            other = echo(proxy.url, route, session=client2)
            assert received(other, "Cookie") == [], other["headers"]


def test_repeated_set_cookie_headers_all_arrive(proxy, route):
    response = requests.get(f"{proxy.url}/cookie?v=two", headers={"Host": route}, timeout=TIMEOUT)
    assert response.raw.headers.getlist("Set-Cookie") == ["session=two; Path=/", "theme=dark; Path=/"]


# ---------------------------------------------------------------- keep-alive


def test_client_keep_alive_survives_backend_connection_close(proxy, route):
    with RawConnection(proxy.port) as conn:
        for i in range(4):
            conn.send(f"GET /echo?close=1&n={i} HTTP/1.1\r\nHost: {route}\r\n\r\n".encode())
            status, headers, body = conn.read_response()
            assert status == 200
            assert f"n={i}".encode() in body
            assert [v.lower() for v in header(headers, "Connection")] != ["close"]


def test_backend_connections_are_reused(make_proxy, route):
    single = make_proxy(server_workers=1)
    ids = set()
    for _ in range(5):
        # A new client connection each time: reuse is the proxy's pool, not the client's.
        ids.add(echo(single.url, route)["connection_id"])
    assert len(ids) == 1, f"backend saw {len(ids)} connections: {ids}"


# -------------------------------------------------------------------- errors


def test_refused_backend_gives_502_page_quickly(proxy, rdb, host):
    rdb.rpush(f"frontend:{host}", "refused-app", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    response = requests.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    assert response.status_code == 502
    assert f"<title>{page_title(502)}</title>" in response.text
    assert elapsed < 3.0, f"502 took {elapsed:.2f}s"  # not the 5 s tcpTimeout: a refusal is final


def test_slow_backend_gives_504(make_proxy, route):
    quick = make_proxy(server_tcpTimeout=1)
    started = time.monotonic()
    response = requests.get(f"{quick.url}/slow?delay=10", headers={"Host": route}, timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert f"<title>{page_title(504)}</title>" in response.text
    assert 0.8 < elapsed < 6, f"504 after {elapsed:.2f}s with tcpTimeout=1 (the backend answers after 10 s)"


def _chunked(data: bytes, piece: int = 300) -> Iterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i:i + piece]


def test_request_body_size_limit(make_proxy, route):
    limited = make_proxy(server_maxRequestBodySize=1000)
    url = f"{limited.url}/echo"
    # One client connection throughout: after a 413 the connection stays usable.
    with requests.Session() as client:
        too_big = client.post(url, data=b"x" * 2000, headers={"Host": route}, timeout=TIMEOUT)
        assert too_big.status_code == 413
        assert f"<title>{page_title(413)}</title>" in too_big.text
        fits = client.post(url, data=b"x" * 1000, headers={"Host": route}, timeout=TIMEOUT)
        assert fits.status_code == 200 and fits.json()["body_length"] == 1000
        # Chunked framing declares no length: the limit must hold all the same.
        chunked = client.post(url, data=_chunked(b"x" * 2000), headers={"Host": route}, timeout=TIMEOUT)
        assert chunked.status_code == 413
        small = client.post(url, data=_chunked(b"x" * 900), headers={"Host": route}, timeout=TIMEOUT)
        assert small.status_code == 200 and small.json()["body_length"] == 900


# ----------------------------------------------------------- client framing


@pytest.fixture()
def spy(rdb, host) -> Iterator[socket.socket]:
    """``host`` routed to a listening socket that never answers: a connection to it
    means the proxy forwarded the request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    rdb.rpush(f"frontend:{host}", "spy-app", f"http://127.0.0.1:{listener.getsockname()[1]}")
    yield listener
    listener.close()


def _assert_rejected(proxy, spy, request: bytes) -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: smuggled.test\r\n\r\n"
    with RawConnection(proxy.port) as conn:
        conn.send(request + smuggled)
        status, _ = conn.read_head()
        assert status == 400
        rest = conn.pending(3.0)  # returns once closed; under keepAliveTimeout (5 s), so not idleness
        assert conn.closed, "the connection stayed open after a framing error"
    assert b"HTTP/1." not in rest, "a second response followed: the smuggled request was parsed"
    forwarded, _, _ = select.select([spy], [], [], 0.2)
    assert not forwarded, "the proxy opened a connection to the backend"


SMUGGLING = {
    "content-length-and-transfer-encoding":
        b"POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "conflicting-content-lengths":
        b"POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "duplicate-content-length":
        b"POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content-length-list":
        b"POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "transfer-encoding-not-ending-in-chunked":
        b"POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "transfer-encoding-repeated-last-not-chunked":
        b"POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
        b"0\r\n\r\n",
    "obs-fold":
        b"GET /a HTTP/1.1\r\nHost: {host}\r\nX-Folded: one\r\n two\r\n\r\n",
    "whitespace-before-colon":
        b"POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length : 5\r\n\r\nhello",
    "two-host-headers":
        b"GET /a HTTP/1.1\r\nHost: {host}\r\nHost: other.test\r\n\r\n",
    "two-identical-host-headers":
        b"GET /a HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_ambiguous_framing_rejected_and_not_forwarded(proxy, spy, host, case):
    _assert_rejected(proxy, spy, SMUGGLING[case].replace(b"{host}", host.encode()))


@pytest.mark.parametrize("request_head", [
    b"GET /a HTTP/1.1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost:\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: bad_host!.test\r\n\r\n",
], ids=["missing", "empty", "malformed"])
def test_bad_host_gives_400(proxy, spy, request_head):
    with RawConnection(proxy.port) as conn:
        conn.send(request_head)
        status, _, body = conn.read_response()
    assert status == 400
    assert f"<title>{page_title(400)}</title>".encode() in body
    forwarded, _, _ = select.select([spy], [], [], 0.2)
    assert not forwarded
