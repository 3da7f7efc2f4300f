"""The liveness check a pool runs before lending an idle backend connection."""

from __future__ import annotations

import socket

from cjs_proxy.pipeline.upstream import BackendConnection


def connection_on(sock: socket.socket) -> BackendConnection:
    conn = BackendConnection("127.0.0.1", 1)
    conn.sock = sock
    return conn


def test_idle_open_connection_is_connected() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert connection_on(ours).is_connected is True


def test_connection_closed_by_the_backend_is_not_lent() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        assert connection_on(ours).is_connected is False


def test_unsolicited_bytes_make_a_connection_unusable() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        assert connection_on(ours).is_connected is False


def test_never_opened_connection_is_not_connected() -> None:
    assert BackendConnection("127.0.0.1", 1).is_connected is False
