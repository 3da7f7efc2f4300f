"""The kernel-poll readiness check shared by backend pools and the invalidation feed."""

from __future__ import annotations

import socket

from cjs_proxy.pipeline.sockets import readable_now


def test_a_silent_socket_is_not_readable() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert readable_now(ours) is False


def test_pending_bytes_make_it_readable() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"x")
        assert readable_now(ours) is True
        assert ours.recv(1) == b"x"  # the check consumed nothing
        assert readable_now(ours) is False


def test_a_socket_closed_by_its_peer_is_readable() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        assert readable_now(ours) is True


def test_any_of_several_sockets_or_descriptors() -> None:
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    with first, first_peer, second, second_peer:
        assert readable_now(first, second.fileno()) is False
        second_peer.sendall(b"x")
        assert readable_now(first, second.fileno()) is True
