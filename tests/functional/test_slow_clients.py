"""Slow clients cannot starve other clients of a backend (issue 11).

Slow POSTs (one body byte, then silence) and clients that never read a large answer
used to hold every pooled connection (``server.maxSockets``): other clients of the app
waited ``server.tcpTimeout`` for a 503. Here a normal GET gets its 200 while they stall.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.backend import pattern_bytes
from tests.harness import Backend, wait_for

#: Patience before the pool answers 503 (pool timeout = connect timeout = tcpTimeout).
STARVATION = 20
BIG = 8 * 1024 * 1024


@pytest.fixture()
def lone_backend(tmp_path: Path) -> Iterator[Backend]:
    """A backend of this test alone, so its accepted connections can be counted."""
    backend = Backend(tmp_path / "backend", "lone")
    yield backend
    backend.stop()


def established_to(port: int) -> int:
    """Connections the backend accepted and still holds (server side of /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def non_reader(port: int, host: str, path: str) -> socket.socket:
    """A client that asks for a large answer and never reads it (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def slow_post(port: int, host: str) -> socket.socket:
    """A client that declares a small body and sends one byte of it."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\nx".encode())
    return sock


def stalled_upload(port: int, host: str) -> socket.socket:
    """A client that sends 128 KiB of a 1 MiB body, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {1 << 20}\r\n\r\n".encode()
                 + b"u" * (128 * 1024))
    return sock


def read_whole_answer(sock: socket.socket, size: int) -> tuple[bytes, str]:
    """The head and the sha256 of a ``size``-byte body, read from a blocking socket."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the head: {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    digest = hashlib.sha256(body)
    received = len(body)
    while received < size:
        chunk = sock.recv(1 << 20)
        assert chunk, f"cut after {received} of {size} bytes"
        digest.update(chunk)
        received += len(chunk)
    return head, digest.hexdigest()


@pytest.mark.parametrize("spool", [16 << 20, 0], ids=["non-readers spooled", "spooling off: non-readers cut"])
def test_stalled_clients_leave_a_connection_for_a_normal_get(make_proxy, rdb, lone_backend, host, spool):
    proxy = make_proxy(server_maxSockets=4, server_tcpTimeout=STARVATION, server_spoolMaxBytes=spool)
    rdb.rpush(f"frontend:{host}", "app", lone_backend.url)
    stalled = [slow_post(proxy.port, host) for _ in range(3)]
    try:
        stalled += [stalled_upload(proxy.port, host) for _ in range(2)]
        stalled += [non_reader(proxy.port, host, f"/bytes/{BIG}") for _ in range(5)]
        wait_for(lambda: established_to(lone_backend.port) >= 4, what="the pool taken by the stalled clients")
        started = time.monotonic()
        answer = requests.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=STARVATION + 10)
        elapsed = time.monotonic() - started
    finally:
        for sock in stalled:
            sock.close()
    assert answer.status_code == 200
    print(f"normal GET answered in {elapsed:.2f}s")
    assert elapsed < STARVATION / 3, f"{elapsed:.1f}s: starved"


def test_a_slow_reader_is_never_cut_while_nobody_needs_the_pool(make_proxy, rdb, lone_backend, host):
    proxy = make_proxy(server_maxSockets=1)  # no slow lane at all: only pressure could cut it
    rdb.rpush(f"frontend:{host}", "app", lone_backend.url)
    sock = non_reader(proxy.port, host, f"/bytes/{BIG}")
    with sock:
        wait_for(lambda: established_to(lone_backend.port) >= 1, what="the download started")
        time.sleep(2)  # stalled for several sweeps, on purpose
        head, digest = read_whole_answer(sock, BIG)
    assert head.startswith(b"HTTP/1.1 200")
    assert digest == hashlib.sha256(pattern_bytes(BIG)).hexdigest()


def test_a_small_body_sent_slowly_arrives_whole(make_proxy, rdb, lone_backend, host):
    """Read before a connection is taken, then sent at once: the backend sees all of it."""
    proxy = make_proxy(server_maxSockets=1)
    rdb.rpush(f"frontend:{host}", "app", lone_backend.url)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
                     "01234".encode())
        time.sleep(1)  # the proxy holds no backend connection meanwhile
        assert established_to(lone_backend.port) == 0
        sock.sendall(b"56789")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"body_length": 10' in data


def test_answers_their_clients_do_not_take_are_spooled_and_the_pool_given_back(make_proxy, rdb, lone_backend, host):
    """Clients on the normal client's own address that do not read their 8 MiB: their answers
    go to spools, their connections back to the pool; a normal GET is answered at once, and
    every non-reader, when it does read, gets its whole answer."""
    proxy = make_proxy(server_maxSockets=2, server_tcpTimeout=STARVATION)
    rdb.rpush(f"frontend:{host}", "app", lone_backend.url)
    readers = [non_reader(proxy.port, host, f"/bytes/{BIG}") for _ in range(4)]
    try:
        wait_for(lambda: established_to(lone_backend.port) >= 1, what="the downloads started")
        started = time.monotonic()
        answer = requests.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=STARVATION + 10)
        elapsed = time.monotonic() - started
        assert answer.status_code == 200
        assert elapsed < STARVATION / 3, f"{elapsed:.1f}s: starved"
        expected = hashlib.sha256(pattern_bytes(BIG)).hexdigest()
        for sock in readers:
            head, digest = read_whole_answer(sock, BIG)
            assert head.startswith(b"HTTP/1.1 200") and digest == expected
    finally:
        for sock in readers:
            sock.close()
