"""Slow and greedy clients, through the real gunicorn process (issue 11, README "Limits and timeouts").

Each test sets small limits in its own proxy's config and checks one rule from the
client's side: heads and bodies that stop arriving, answers left unread, heads too
large, bodies nobody wants, and the memory a stalled upload costs.
"""

from __future__ import annotations

import socket
import threading
import time

from tests.harness import ROOT, read_response, rss_kib, wait_for

TIMEOUT = 10


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes (or resets) ``sock`` within ``within`` seconds; reads and drops data."""
    deadline = time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def trickle_head(sock: socket.socket, steps: int, every: float) -> bool:
    """Send a head one byte per ``every`` seconds (never finishing it); True once the server closed."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: __ping__\r\n")
    for _ in range(steps):
        try:
            sock.sendall(b"X")
        except OSError:
            return True
        if closed_by_server(sock, every):
            return True
    return False


def get(port: int, host: str, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return read_response(sock)


def served(port: int, host: str) -> bool:
    try:
        return get(port, host, "/echo")[0] == 200
    except OSError:
        return False


# ------------------------------------------------------------------ request heads


def test_header_timeout_closes_a_slow_first_head_even_with_keepalive_off(make_proxy):
    proxy = make_proxy(server_headerTimeout=1, server_keepAliveTimeout=0)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        started = time.monotonic()
        assert trickle_head(sock, steps=40, every=0.25), "a head trickled for 10 s was never cut"
        assert time.monotonic() - started < 6


def test_header_timeout_applies_to_later_keepalive_requests(make_proxy):
    proxy = make_proxy(server_headerTimeout=1, server_keepAliveTimeout=60)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: __ping__\r\n\r\n")
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert trickle_head(sock, steps=40, every=0.25), "a keep-alive head trickled for 10 s was never cut"
        assert time.monotonic() - started < 6


def test_idle_keepalive_connection_still_waits_its_keepalive_timeout(make_proxy):
    """The head clock starts at the next request's first byte, not when the last one ended."""
    proxy = make_proxy(server_headerTimeout=1, server_keepAliveTimeout=4)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: __ping__\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert not closed_by_server(sock, 2)  # idle for longer than server.headerTimeout
        sock.sendall(b"GET / HTTP/1.1\r\nHost: __ping__\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_head_over_max_header_bytes_gets_431_and_nothing_is_forwarded(make_proxy, rdb, host, scripted):
    rdb.rpush(f"frontend:{host}", "app", scripted.url)
    proxy = make_proxy(server_maxHeaderBytes=4096)
    filler = "".join(f"X-Fill-{i}: {'v' * 1000}\r\n" for i in range(5))  # each header well under gunicorn's
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET /big HTTP/1.1\r\nHost: {host}\r\n{filler}\r\n".encode())
        status, headers, body = read_response(sock)
    assert status == 431
    assert body == (ROOT / "errors" / "431.html").read_bytes()
    assert headers["connection"] == "close"
    assert get(proxy.port, host, "/small")[0] == 200  # a head under the limit passes
    assert [r.path for r in scripted.received] == ["/small"]


# ------------------------------------------------------------------ request bodies


def test_body_timeout_answers_408_closes_and_releases_the_backend_connection(make_proxy, rdb, host, scripted):
    rdb.rpush(f"frontend:{host}", "app", scripted.url)
    proxy = make_proxy(server_bodyTimeout=1, server_maxSockets=1)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\nab".encode())
        status, headers, _ = read_response(sock)
        assert status == 408
        assert headers["connection"] == "close"
        assert closed_by_server(sock, TIMEOUT)
    # A body this small is read whole before a backend connection is taken (slow clients'
    # share of a pool): the silent client never held one. If one was opened, it is closed.
    if 1 in scripted.connection_ids():
        wait_for(lambda: scripted.connection_closed(1), "backend connection closed")
    status, _, body = get(proxy.port, host, "/next")  # maxSockets 1: the slot is free
    assert status == 200
    assert body.startswith(b"path=/next conn=")


def test_answer_before_the_body_closes_after_linger_time(make_proxy, rdb):
    """An unknown host's 400 while the client streams a huge body: the worker reads
    and drops the body for server.lingerTime, then closes, instead of draining it all."""
    proxy = make_proxy(server_lingerTime=1)
    block = b"x" * 65536
    outcome: dict[str, object] = {}

    def stream() -> None:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: nobody.test\r\nContent-Length: 100000000000\r\n\r\n")
            deadline = time.monotonic() + 15
            try:
                while time.monotonic() < deadline:
                    sock.sendall(block)
            except OSError as exc:
                outcome["cut"] = type(exc).__name__
            outcome["seconds"] = time.monotonic() - started

    started = time.monotonic()
    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    thread.join(20)
    assert "cut" in outcome, "the connection was still draining after 15 s"
    assert float(outcome["seconds"]) < 8  # type: ignore[arg-type]


def test_answer_before_the_body_says_connection_close(make_proxy, rdb):
    proxy = make_proxy(server_lingerTime=1)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: nobody.test\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        status, headers, _ = read_response(sock)
        assert status == 400
        assert headers["connection"] == "close"
        assert closed_by_server(sock, 5)


def test_stalled_uploads_hold_little_memory(make_proxy, rdb, host, backends):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    proxy = make_proxy()
    worker = proxy.worker_pids()[0]
    assert get(proxy.port, host, "/warm")[0] == 200
    before = rss_kib(worker)
    head = f"POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n".encode()
    stalled = []
    try:
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
            sock.sendall(head + b"x" * (1024 * 1024 - 1000))
            stalled.append(sock)
        # Read once the worker holds what was sent (its RSS stops growing); 1.35 MiB each before.
        samples = [rss_kib(worker)]
        for _ in range(20):
            time.sleep(0.25)
            samples.append(rss_kib(worker))
            if samples[-1] == samples[-2] == samples[-3 if len(samples) > 2 else -2]:
                break
        growth_kib = max(samples) - before
    finally:
        for sock in stalled:
            sock.close()
    assert growth_kib < 30 * 256, f"{growth_kib} KiB for 30 stalled uploads"


# ------------------------------------------------------------------ responses


def test_send_timeout_closes_a_client_that_stops_reading_and_frees_the_backend(make_proxy, rdb, host, backends):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    proxy = make_proxy(server_sendTimeout=1, server_maxSockets=1, server_tcpTimeout=30)
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.settimeout(TIMEOUT)
    size = 64 * 1024 * 1024
    try:
        reader.connect(("127.0.0.1", proxy.port))
        reader.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = len(reader.recv(4096))  # the answer has started: then this client stops reading
        # The only pooled connection is the stuck client's until sendTimeout frees it.
        wait_for(lambda: served(proxy.port, host), "a second client served", timeout=15)
        reader.settimeout(2)
        try:
            while chunk := reader.recv(1024 * 1024):
                received += len(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        assert received < size
    finally:
        reader.close()
