"""The liveness check urllib3 runs before reusing a pooled backend connection."""

from __future__ import annotations

import socket

import pytest
from urllib3 import connection as urllib3_connection

from cjs_proxy.upstream import use_kernel_poll_for_liveness_checks


@pytest.fixture()
def kernel_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib3_connection, "wait_for_read", urllib3_connection.wait_for_read)
    use_kernel_poll_for_liveness_checks()


def test_idle_open_connection_is_not_readable(kernel_poll: None) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert urllib3_connection.wait_for_read(ours, timeout=0.0) is False


def test_connection_closed_by_the_backend_is_seen(kernel_poll: None) -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        assert urllib3_connection.wait_for_read(ours, timeout=0.0) is True


def test_unsolicited_bytes_are_seen(kernel_poll: None) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        assert urllib3_connection.wait_for_read(ours, timeout=0.0) is True


def test_waits_with_a_timeout_keep_the_cooperative_implementation(kernel_poll: None) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert urllib3_connection.wait_for_read(ours, timeout=0.01) is False
