"""Socket-level tests: misbehaving backends and unusual requests, byte for byte.

In the style of urllib3's ``test_socketlevel.py``: the backend is
``tests/scripted_backend.py``, which writes exact scripted bytes and records exact
received bytes, and the client is a raw socket, so neither side normalises anything.

Most tests use two clients on a proxy with ONE pooled backend connection
(``server.maxSockets: 1``, one worker): client A triggers the misbehaving answer,
then client B must get B's own response, byte for byte. A proxy that mis-frames a
backend answer leaves bytes on the pooled connection, and the next client to use
it would read someone else's response (and cookies): these tests are about that
class of leak, and about what the proxy lets through on each side.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.functional.test_forwarding import RawConnection, header
from tests.harness import ANSWER_TIMEOUT, ROOT, Process, Proxy, free_port, port_open, wait_for
from tests.scripted_backend import (
    OnSocket,
    Received,
    ScriptedBackend,
    ordinary_body,
    send_then_close,
)

#: Seconds a client socket waits for the proxy (generous: the machine may be loaded).
TIMEOUT = ANSWER_TIMEOUT
#: Seconds within which "nothing more arrives" is checked.
QUIET = 1.0

MakeProxy = Callable[..., Proxy]


# ------------------------------------------------------------------- helpers


def error_page(status: int) -> bytes:
    """The body the proxy answers its own ``status`` with: ``errors/<status>.html``, else ``default.html``."""
    page = ROOT / "errors" / f"{status}.html"
    return (page if page.exists() else ROOT / "errors" / "default.html").read_bytes()


class Client(RawConnection):
    """A raw client connection that also keeps every byte it received, for leak checks."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        super().__init__(port, timeout)
        self.raw = b""

    def _fill(self) -> None:
        before = len(self.buffer)
        super()._fill()
        self.raw += self.buffer[before:]

    def get(self, host: str, target: str, extra: str = "", method: str = "GET") -> None:
        """Send one request head; ``extra`` is more header lines, each ending in CRLF."""
        self.send(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1"))

    def read_final(self) -> tuple[list[tuple[int, list[tuple[str, str]]]], int, list[tuple[str, str]], bytes]:
        """Interim (1xx other than 101) responses, then the final one with its body."""
        interim: list[tuple[int, list[tuple[str, str]]]] = []
        while True:
            try:
                status, headers, body = self.read_response()
            except EOFError:
                raise AssertionError(f"connection closed after interim responses {interim} "
                                     f"without a final response: {self.raw!r}") from None
            if 100 <= status < 200 and status != 101:
                interim.append((status, headers))
                continue
            return interim, status, headers, body

    def read_until_reset(self) -> bytes:
        """Read until the proxy resets the connection; a clean EOF (FIN) fails the test."""
        data = self.buffer
        self.buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                raise AssertionError(f"clean EOF after {len(data)} bytes: a truncated body looked complete: "
                                     f"{data!r}")
            data += chunk


def own_response(proxy: Proxy, scripted: ScriptedBackend, host: str, path: str,
                 client: Client | None = None) -> Received:
    """Client B's request: it must get exactly the backend's answer to B, and nothing else."""
    conn = client or Client(proxy.port)
    try:
        conn.get(host, path)
        status, headers, body = conn.read_response()
        received = scripted.wait_for_request(path)
        assert status == 200, (status, headers, body)
        assert body == ordinary_body(received), f"client B got another response's body: {body!r}"
        assert header(headers, "Set-Cookie") == [f"user={path}"], headers
        assert header(headers, "Content-Type") == ["text/plain"], headers
        assert conn.pending(0.2) == b"", "bytes followed B's response"
    finally:
        if client is None:
            conn.sock.close()
    return received


def websocket_handshake(host: str, target: str, connection: str = "Upgrade") -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: {connection}\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def accept_websocket(sock: socket.socket, received: Received) -> None:
    """A correct 101 answer to ``received``'s handshake (RFC 6455 4.2.2)."""
    key = received.header("Sec-WebSocket-Key")[0].encode()
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


@pytest.fixture()
def one_socket(make_proxy: MakeProxy) -> Proxy:
    """A proxy whose single worker keeps ONE connection per backend: clients A and B share it."""
    return make_proxy(server_maxSockets=1, server_workers=1)


# ------------------------------------------------- 1. interim (1xx) responses

FINAL_A = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: user=/interim\r\n"
           b"Content-Length: 13\r\n\r\nfinal for A!\n")
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\nX-Interim: hint\r\n\r\n"
INTERIM = {
    "103": EARLY_HINTS,
    "102": b"HTTP/1.1 102 Processing\r\n\r\n",
    "100": b"HTTP/1.1 100 Continue\r\n\r\n",
    "100-102-103": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + EARLY_HINTS,
}


def check_interim(interim: list[tuple[int, list[tuple[str, str]]]]) -> None:
    """Only a 103 may reach the client, carrying its Link headers and nothing else."""
    for status, headers in interim:
        assert status == 103, f"interim {status} reached the client"
        assert header(headers, "Link") == ["</style.css>; rel=preload; as=style"], headers
        assert header(headers, "Set-Cookie") == [], headers
        assert {name.lower() for name, _ in headers} == {"link"}, f"103 carries more than Link: {headers}"


@pytest.mark.parametrize("kind", sorted(INTERIM))
def test_interim_responses_are_not_taken_for_the_final_one(one_socket, scripted, scripted_host, kind):
    """A 1xx before the final answer: a proxy that relays it as final leaves the real 200
    (with A's cookie) on the pooled connection, for B to read."""
    def answer(sock: socket.socket, _received: Received) -> None:
        sock.sendall(INTERIM[kind])  # two writes: the interim answer may arrive alone
        sock.sendall(FINAL_A)

    scripted.script["/interim"] = OnSocket(answer, keep_open=True)
    with Client(one_socket.port) as a:
        a.get(scripted_host, "/interim")
        interim, status, headers, body = a.read_final()
        check_interim(interim)
        assert (status, body) == (200, b"final for A!\n"), (status, headers, body)
        assert header(headers, "Set-Cookie") == ["user=/interim"]
        assert a.pending(QUIET) == b""
    own_response(one_socket, scripted, scripted_host, "/b-after-interim")


HINTS_APP = '''
def app(environ, start_response):
    environ["wsgi.early_hints"]([("Link", "</style.css>; rel=preload; as=style")])
    body = ("path=" + environ["PATH_INFO"] + "\\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "user=" + environ["PATH_INFO"]),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def test_early_hints_from_a_real_gunicorn_backend(make_proxy, rdb, host, tmp_path: Path):
    """The same with a real server: gunicorn's ``wsgi.early_hints`` sends a 103 first."""
    (tmp_path / "hints_app.py").write_text(HINTS_APP)
    port = free_port()
    backend = Process([sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}",
                       "--chdir", str(tmp_path), "hints_app:app"], tmp_path / "hints.log")
    try:
        backend.wait_until(lambda: port_open(port), what="gunicorn early-hints backend")
        rdb.rpush(f"frontend:{host}", "hints-app", f"http://127.0.0.1:{port}")
        proxy = make_proxy(server_maxSockets=1, server_workers=1)
        for client, path in (("A", "/hinted-a"), ("B", "/hinted-b")):
            with Client(proxy.port) as conn:
                conn.get(host, path)
                interim, status, headers, body = conn.read_final()
                check_interim(interim)
                assert (status, body) == (200, f"path={path}\n".encode()), (client, status, headers, body)
                assert header(headers, "Set-Cookie") == [f"user={path}"], (client, headers)
    finally:
        backend.stop()


# ------------------------------------- 2. Content-Length with Transfer-Encoding


def test_content_length_beside_chunked_is_ignored_and_backend_connection_closed(one_socket, scripted,
                                                                                scripted_host):
    """RFC 9112 6.3: chunked wins over Content-Length, and such a connection must be closed
    after the response, since the backend's framing cannot be trusted."""
    scripted.script["/cl-te"] = (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n"
                                 b"Set-Cookie: user=/cl-te\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    with Client(one_socket.port) as a:
        a.get(scripted_host, "/cl-te")
        status, headers = a.read_head()
        assert status == 200
        assert header(headers, "Content-Length") in ([], ["5"]), f"backend's Content-Length relayed: {headers}"
        body = a.read_body(headers)
        assert body == b"hello"
        first = scripted.wait_for_request("/cl-te").connection
        # The client's own keep-alive connection is intact...
        second = own_response(one_socket, scripted, scripted_host, "/a-again", client=a)
    # ...but the backend connection that sent the ambiguous framing is not reused.
    wait_for(lambda: scripted.connection_closed(first), "backend connection of /cl-te closed")
    b = own_response(one_socket, scripted, scripted_host, "/b-after-cl-te")
    assert first not in (second.connection, b.connection)


# ------------------------------------------------ 3. 101 to an ordinary request


def test_switching_protocols_to_an_ordinary_request_is_502(one_socket, scripted, scripted_host):
    """A 101 nobody asked for: after it the backend speaks another protocol, so nothing it
    sends (here: a fake response) may reach A, or B through the pooled connection."""
    scripted.script["/switch"] = OnSocket(lambda sock, _r: sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nSet-Cookie: user=leaked\r\nContent-Length: 6\r\n\r\nleak!\n"), keep_open=True)
    with Client(one_socket.port) as a:
        a.get(scripted_host, "/switch")
        status, _, body = a.read_response()
        assert status == 502 and body == error_page(502), (status, body)
        a.pending(0.2)
        assert b"leak" not in a.raw
    first = scripted.wait_for_request("/switch").connection
    b = own_response(one_socket, scripted, scripted_host, "/b-after-switch")
    assert b.connection != first


# ------------------------------------------------------ 4. upgrade negotiation


def test_upgrade_offering_more_than_websocket_is_an_ordinary_request(one_socket, scripted, scripted_host):
    """``Upgrade: websocket, h2c`` is not a WebSocket handshake the proxy can tunnel: it is
    proxied as a plain request, without the hop-by-hop Upgrade."""
    with Client(one_socket.port) as a:
        a.get(scripted_host, "/offer", "Upgrade: websocket, h2c\r\nConnection: Upgrade\r\n")
        status, _, body = a.read_response()
        received = scripted.wait_for_request("/offer")
        assert (status, body) == (200, ordinary_body(received))
        assert received.header("Upgrade") == [], received.head
        assert all("upgrade" not in v.lower() for v in received.header("Connection")), received.head
        own_response(one_socket, scripted, scripted_host, "/a-after-offer", client=a)  # no tunnel: still HTTP
    own_response(one_socket, scripted, scripted_host, "/b-after-offer")


def test_websocket_answered_with_another_protocol_is_502_and_no_tunnel(one_socket, scripted, scripted_host):
    """The backend switched to a protocol the client did not ask for: no tunnel is opened."""
    scripted.script["/ws-h2c"] = OnSocket(lambda sock, _r: sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"), keep_open=True)
    with Client(one_socket.port) as a:
        a.send(websocket_handshake(scripted_host, "/ws-h2c"))
        status, _, body = a.read_response()
        assert status == 502 and body == error_page(502), (status, a.raw)
        try:
            a.send(b"\x81\x85tunnel-probe")
            a.pending(QUIET)
        except OSError:
            pass  # the proxy may close the connection: nothing can pass either way
    handshake = scripted.wait_for_request("/ws-h2c")
    assert scripted.bytes_on(handshake.connection) == handshake.head, "bytes passed after the refused 101"
    own_response(one_socket, scripted, scripted_host, "/b-after-ws-h2c")


# --------------------------------------------- 5. invalid backend header values

INVALID_VALUES = {
    "bare-cr": b"X-Note: a\rSet-Cookie: injected=1\r\n",
    "nul": b"X-Note: a\x00Set-Cookie: injected=1\r\n",
    "bare-lf": b"X-Note: a\nSet-Cookie: injected=1\r\n",
}


@pytest.mark.parametrize("case", sorted(INVALID_VALUES))
def test_invalid_backend_header_value_is_502(one_socket, scripted, scripted_host, case):
    """A control character in a header value is how a backend (or what it echoes)
    injects headers: the whole answer is refused, not repaired."""
    scripted.script["/bad-header"] = (b"HTTP/1.1 200 OK\r\n" + INVALID_VALUES[case]
                                      + b"Content-Length: 5\r\n\r\nhello")
    with Client(one_socket.port) as a:
        a.get(scripted_host, "/bad-header")
        status, _, body = a.read_response()
        assert status == 502 and body == error_page(502), a.raw
        a.pending(0.2)
        assert b"injected" not in a.raw
    own_response(one_socket, scripted, scripted_host, "/b-after-bad-header")


# ------------------------------------------------------- 6. Content-Length lists

SAME_LENGTHS = {
    "list": b"Content-Length: 5, 5\r\n",
    "repeated": b"Content-Length: 5\r\nContent-Length: 5\r\n",
}
CONFLICTING_LENGTHS = {
    "list": b"Content-Length: 5, 6\r\n",
    "repeated": b"Content-Length: 5\r\nContent-Length: 6\r\n",
}


@pytest.mark.parametrize("case", sorted(SAME_LENGTHS))
def test_identical_content_lengths_are_one_length(one_socket, scripted, scripted_host, case):
    """RFC 9110 8.6: identical values may be taken as one; the client gets one clean length."""
    scripted.script["/same-length"] = b"HTTP/1.1 200 OK\r\n" + SAME_LENGTHS[case] + b"\r\nhello"
    with Client(one_socket.port) as a:
        a.get(scripted_host, "/same-length")
        status, headers, body = a.read_response()
        assert (status, body) == (200, b"hello"), a.raw
        assert header(headers, "Content-Length") in ([], ["5"]), headers
        own_response(one_socket, scripted, scripted_host, "/a-after-same-length", client=a)
    own_response(one_socket, scripted, scripted_host, "/b-after-same-length")


@pytest.mark.parametrize("case", sorted(CONFLICTING_LENGTHS))
def test_conflicting_content_lengths_are_502(one_socket, scripted, scripted_host, case):
    """Which length is right cannot be known: 502, and the connection is not reused."""
    scripted.script["/conflict"] = b"HTTP/1.1 200 OK\r\n" + CONFLICTING_LENGTHS[case] + b"\r\nhello!"
    with Client(one_socket.port) as a:
        a.get(scripted_host, "/conflict")
        status, _, body = a.read_response()
        assert status == 502 and body == error_page(502), a.raw
    first = scripted.wait_for_request("/conflict").connection
    assert own_response(one_socket, scripted, scripted_host, "/b-after-conflict").connection != first


# ------------------------------------------------------------ 7. truncated body


def test_truncated_backend_body_resets_the_client_connection(one_socket, scripted, scripted_host):
    """A FIN after a short body lets a client (or a cache) take 10 of 100 bytes for a whole
    response: the proxy must abort with an RST (SO_LINGER 0)."""
    scripted.script["/truncated"] = send_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n"
                                                    b"Set-Cookie: user=/truncated\r\n\r\n0123456789")
    with Client(one_socket.port) as a:
        a.get(scripted_host, "/truncated")
        a.read_until_reset()  # the RST may come before or after the 10 bytes are read
    own_response(one_socket, scripted, scripted_host, "/b-after-truncated")


# --------------------------------------------------- 8. request target as sent

#: Request targets gunicorn's parser accepts (it takes any printable ASCII, RFC 9112 3.2):
#: the proxy must not re-encode or normalise them.
TARGETS = ["/p?sig=ab%2bcd%3d", "/%zz", "/a|b", "/a{b}", "/a<b>", '/a"b', "/a^b", "/a`b"]


@pytest.mark.parametrize("target", TARGETS)
def test_request_target_passes_byte_for_byte(proxy, scripted, scripted_host, target):
    """Signed URLs and odd-but-accepted targets reach the backend exactly as written."""
    with Client(proxy.port) as a:
        a.get(scripted_host, target)
        status, _, _ = a.read_response()
    assert status == 200
    wait_for(lambda: bool(scripted.received), "request at the backend")
    assert scripted.received[0].request_line == f"GET {target} HTTP/1.1".encode()


# ------------------------------------------------------- 9. absolute-form target


def test_absolute_form_target_routes_on_its_authority_and_sets_host(proxy, rdb, make_scripted):
    """RFC 9112 3.2.2: the target's authority replaces Host, and the backend gets origin-form."""
    stamp = f"{time.monotonic_ns()}"
    a_host, b_host = f"a-{stamp}.test", f"b-{stamp}.test"
    a_backend, b_backend = make_scripted(), make_scripted()
    rdb.rpush(f"frontend:{a_host}", "a-app", a_backend.url)
    rdb.rpush(f"frontend:{b_host}", "b-app", b_backend.url)
    with Client(proxy.port) as client:
        client.send(f"GET http://{a_host}/x HTTP/1.1\r\nHost: {b_host}\r\n\r\n".encode())
        status, _, _ = client.read_response()
    assert status == 200
    received = a_backend.wait_for_request("/x")
    assert received.request_line == b"GET /x HTTP/1.1"
    assert received.header("Host") == [a_host], received.head
    assert b_backend.received == []


def test_absolute_form_with_another_scheme_is_400(proxy, scripted, scripted_host):
    """``ws://`` is not a scheme an HTTP proxy serves: 400, nothing forwarded."""
    with Client(proxy.port) as client:
        client.send(f"GET ws://other/x HTTP/1.1\r\nHost: {scripted_host}\r\n\r\n".encode())
        status, _, body = client.read_response()
    assert status == 400 and body == error_page(400), client.raw
    assert scripted.received == []


# ------------------------------------------------- 10. Connection cannot remove


def test_connection_header_cannot_remove_host_framing_or_proxy_headers(proxy, scripted, scripted_host):
    """``Connection`` names hop-by-hop headers, but a client cannot use it to strip Host
    (the backend would see the proxy's idea of it), the body's framing, or the
    headers the proxy sets."""
    named = "Host, Content-Length, Content-Type, X-Forwarded-For, X-Real-IP, X-Request-ID, X-Forwarded-Proto"
    with Client(proxy.port) as client:
        client.send((f"POST /named HTTP/1.1\r\nHost: {scripted_host}\r\nConnection: {named}\r\n"
                     "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello").encode())
        status, _, _ = client.read_response()
    assert status == 200
    received = scripted.wait_for_request("/named")
    assert received.header("Host") == [scripted_host], received.head
    assert received.header("Content-Length") == ["5"] and received.body == b"hello", received.head
    assert received.header("Content-Type") == ["text/plain"], received.head
    assert received.header("X-Forwarded-For") == ["127.0.0.1"], received.head
    assert received.header("X-Real-IP") == ["127.0.0.1"], received.head
    assert received.header("X-Forwarded-Proto") == ["http"], received.head
    assert len(received.header("X-Request-ID")) == 1, received.head


def test_websocket_connection_naming_host_keeps_host(proxy, scripted, scripted_host):
    """The handshake to the backend carries the client's Host even if Connection names it."""
    with Client(proxy.port) as client:
        client.send(websocket_handshake(scripted_host, "/ws-named", connection="Upgrade, Host"))
        status, _, _ = client.read_response()
    received = scripted.wait_for_request("/ws-named")
    assert received.header("Host") == [scripted_host], received.head
    assert status == 200  # the scripted backend refuses the upgrade with its ordinary answer


# --------------------------------------------------- 11. the websocket handshake


def test_websocket_handshake_carries_only_what_the_client_sent(proxy, scripted, scripted_host):
    """No urllib3 placeholder value and no default header invented on the way."""
    scripted.script["/ws-clean"] = OnSocket(accept_websocket, keep_open=True)
    with Client(proxy.port) as client:
        client.send(websocket_handshake(scripted_host, "/ws-clean"))
        status, _ = client.read_head()
    received = scripted.wait_for_request("/ws-clean")
    assert b"@@@SKIP_HEADER@@@" not in received.head, received.head
    assert received.header("User-Agent") == [], received.head
    assert received.header("Accept-Encoding") == [], received.head
    assert status == 101


# ------------------------------------------------------ 12. forwarding headers


def test_client_forwarding_headers_are_replaced_when_not_trusted(proxy, scripted, scripted_host):
    """An untrusted client cannot tell the backend which host or client it came through:
    its X-Forwarded-Host and Forwarded are dropped, X-Forwarded-Host is the routed host."""
    with Client(proxy.port) as client:
        client.get(f"{scripted_host.upper()}:8080", "/fwd",
                   "X-Forwarded-Host: evil.test\r\nForwarded: for=203.0.113.9;host=evil.test\r\n")
        status, _, _ = client.read_response()
    assert status == 200
    received = scripted.wait_for_request("/fwd")
    assert received.header("Forwarded") == [], received.head
    assert received.header("X-Forwarded-Host") == [scripted_host], received.head


def test_forwarded_is_kept_from_a_trusted_proxy(make_proxy, scripted, scripted_host):
    """Behind ``server.trustedProxies`` the peer's Forwarded is believed and kept; the
    backend still learns the routed host."""
    trusting = make_proxy(server_trustedProxies=["127.0.0.1/32"])
    with Client(trusting.port) as client:
        client.get(scripted_host, "/fwd-trusted", "Forwarded: for=203.0.113.9;proto=https\r\n")
        status, _, _ = client.read_response()
    assert status == 200
    received = scripted.wait_for_request("/fwd-trusted")
    assert received.header("Forwarded") == ["for=203.0.113.9;proto=https"], received.head
    assert received.header("X-Forwarded-Host") == [scripted_host], received.head


# ------------------------------------------------- 13. methods and codings refused


def test_connect_is_405(one_socket, scripted, scripted_host):
    """A reverse proxy opens no tunnels to arbitrary authorities."""
    with Client(one_socket.port) as a:
        a.send(f"CONNECT {scripted_host}:443 HTTP/1.1\r\nHost: {scripted_host}:443\r\n\r\n".encode())
        status, _, body = a.read_response()
    assert status == 405 and body == error_page(405), a.raw
    assert scripted.received == []
    own_response(one_socket, scripted, scripted_host, "/b-after-connect")


def test_transfer_coding_other_than_chunked_is_501(one_socket, scripted, scripted_host):
    """``Transfer-Encoding: gzip, chunked`` passes gunicorn's parser (it then closes the
    connection); the proxy cannot forward a transfer coding it does not implement (RFC 9112 6.1)."""
    with Client(one_socket.port) as a:
        a.send(f"POST /gzip-te HTTP/1.1\r\nHost: {scripted_host}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
               "5\r\nhello\r\n0\r\n\r\n".encode())
        status, _, body = a.read_response()
    assert status == 501 and body == error_page(501), a.raw
    assert scripted.received == []
    own_response(one_socket, scripted, scripted_host, "/b-after-gzip-te")

