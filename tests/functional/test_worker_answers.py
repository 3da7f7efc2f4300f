"""What the worker class answers itself, through the real gunicorn process.

Requests gunicorn's parser rejects never reach the application: the worker's
``handle_error`` answers them, and must use the proxy's pages, not gunicorn's (which
quote the request back). Every response must name ``server.serverHeader``, and
``Expect: 100-continue`` must wait for routing and limits.
"""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests.harness import ANSWER_TIMEOUT, ROOT, read_head, wait_for

TIMEOUT = ANSWER_TIMEOUT
#: A string the client puts in its request; it must never come back in an answer.
MARK = b"Mark7q"

REJECTED = {
    "bare-lf": (b"GET /" + MARK + b" HTTP/1.1\nHost: x.test\n\n", 400),
    "content-length-and-transfer-encoding":
        (b"POST /" + MARK + b" HTTP/1.1\r\nHost: x.test\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "bad-request-line": (b"GET /" + MARK + b"<script> HTTP/9.9 junk\r\nHost: x.test\r\n\r\n", 400),
    "invalid-header-name": (b"GET / HTTP/1.1\r\nHost: x.test\r\nX-" + MARK + b" <b>: 1\r\n\r\n", 400),
    "too-many-headers": (b"GET / HTTP/1.1\r\nHost: x.test\r\n"
                         + b"".join(b"X-" + MARK + b"%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
    "header-too-large": (b"GET / HTTP/1.1\r\nHost: x.test\r\nX-Big: " + MARK * 1400 + b"\r\n\r\n", 431),
    "request-line-too-long": (b"GET /" + MARK * 700 + b" HTTP/1.1\r\nHost: x.test\r\n\r\n", 414),
}


def raw_answer(port: int, request: bytes) -> bytes:
    """Send ``request`` and read the answer until the server closes.

    When the server rejects a request before reading all of it and closes, its kernel
    resets the connection; what arrived before the reset is the answer.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            if not received:
                raise
    return received


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def bundled_page(status: int) -> bytes:
    page = ROOT / "errors" / f"{status}.html"
    return (page if page.exists() else ROOT / "errors" / "default.html").read_bytes()


# -------------------------------------------------------- requests gunicorn rejects


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_request_gets_our_page_with_gunicorns_status(proxy, case):
    request, expected_status = REJECTED[case]
    status, headers, body = split_response(raw_answer(proxy.port, request))
    assert status == expected_status
    assert body == bundled_page(status)
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"
    assert MARK.lower() not in body.lower(), "the answer quotes the request"
    assert headers["server"] == "cjs-proxy"


def test_rejected_request_uses_static_dir_and_keeps_gunicorns_log(make_proxy, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "400.html").write_text("<p>our own 400</p>\n")
    (pages / "default.html").write_text("<p>our default</p>\n")
    proxy = make_proxy(server_staticDir=str(pages))
    _, _, body = split_response(raw_answer(proxy.port, REJECTED["bare-lf"][0]))
    assert body == b"<p>our own 400</p>\n"
    _, _, body = split_response(raw_answer(proxy.port, REJECTED["request-line-too-long"][0]))
    assert body == b"<p>our default</p>\n"
    wait_for(lambda: "Invalid request from ip=127.0.0.1" in proxy.log(), "gunicorn's log line for the rejection")


def test_rejected_request_without_any_page_gets_plain_text(make_proxy, tmp_path):
    empty = tmp_path / "no-pages"
    empty.mkdir()
    proxy = make_proxy(server_staticDir=str(empty))
    status, headers, body = split_response(raw_answer(proxy.port, REJECTED["bad-request-line"][0]))
    assert status == 400
    assert headers["content-type"].startswith("text/plain")
    assert body.startswith(b"400 Bad Request")
    assert MARK.lower() not in body.lower()


# ------------------------------------------------------------------- Server header


def test_server_header_names_the_proxy_everywhere(make_proxy, rdb, backends, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    proxy = make_proxy(server_serverHeader="edge/1.0")
    proxied = requests.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=TIMEOUT)
    unknown = requests.get(f"{proxy.url}/", headers={"Host": "unknown.test"}, timeout=TIMEOUT)
    ping = requests.get(f"{proxy.url}/", headers={"Host": "__ping__"}, timeout=TIMEOUT)
    _, rejected, _ = split_response(raw_answer(proxy.port, REJECTED["bare-lf"][0]))
    assert (proxied.status_code, unknown.status_code, ping.status_code) == (200, 400, 200)
    for headers in (proxied.headers, unknown.headers, ping.headers, rejected):
        assert headers["server"] == "edge/1.0"
    assert len(proxied.raw.headers.getlist("Server")) == 1


def test_default_server_header_is_cjs_proxy(proxy):
    response = requests.get(f"{proxy.url}/", headers={"Host": "__ping__"}, timeout=TIMEOUT)
    assert response.headers["Server"] == "cjs-proxy"


# ------------------------------------------------------------- Expect: 100-continue


def read_until_closed(sock: socket.socket, buffer: bytes) -> bytes:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return buffer
        buffer += chunk


def expect_head(host: str, length: int = 5, path: str = "/echo") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
            f"Expect: 100-continue\r\n\r\n").encode()


def test_expect_continue_for_unknown_host_gets_400_without_100(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(expect_head("unknown.test"))
        head, rest = read_head(sock)  # the body is never sent
        assert head.startswith(b"HTTP/1.1 400 "), head
        body = read_until_closed(sock, rest)  # closed: the withheld body would be the next bytes
    assert body == bundled_page(400)


def test_expect_continue_over_rate_limit_gets_429_without_100(make_proxy, rdb, backends, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    proxy = make_proxy(rateLimit={"enabled": True, "perIp": {"rate": 0.01, "burst": 1}})
    assert requests.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=TIMEOUT).status_code == 200
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(expect_head(host))
        head, _ = read_head(sock)
    assert head.startswith(b"HTTP/1.1 429 "), head


def test_expect_continue_for_known_host_gets_100_then_the_answer(proxy, rdb, backends, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(expect_head(host))
        interim, rest = read_head(sock)
        assert interim == b"HTTP/1.1 100 Continue", interim
        sock.sendall(b"hello")
        head, rest = read_head(sock, rest)
        assert head.startswith(b"HTTP/1.1 200 "), head
        _, headers, _ = split_response(head + b"\r\n\r\n")
        while len(rest) < int(headers["content-length"]):
            rest += sock.recv(65536)
        assert json.loads(rest)["body_length"] == 5
        # The body was asked for and sent: the connection stays usable.
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        second, _ = read_head(sock)
    assert second.startswith(b"HTTP/1.1 200 "), second


def test_expect_continue_with_empty_body_gets_no_100(proxy, rdb, backends, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(expect_head(host, length=0))
        head, _ = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200 "), head
