"""Non-blocking readiness checks that stay out of gevent's hub.

The workers are monkeypatched, so ``select.poll`` is gevent's: even with a zero timeout
it starts a watcher, arms a timer and switches to the hub and back (about 15 us against
1 us, measured on a Redis connection). The checks here run on every request (is a pooled
backend connection still silent? did Redis announce a routing change?) and must only
ask the kernel, never wait: a zero-timeout poll cannot block, so the original one is safe.

``Pacer`` is the other side of the same coin: loops that copy between sockets give way
to the worker's other greenlets now and then, since a socket that never runs dry never
makes gevent switch.
"""

from __future__ import annotations

import select
import socket
import struct
from typing import Protocol

import gevent
from gevent import monkey

#: Bytes a copy loop may move through a socket before it lets the worker's other greenlets run.
YIELD_EVERY = 64 * 1024

_LINGER_ZERO = struct.pack("ii", 1, 0)
#: The kernel's poll, not gevent's (poll, unlike select, takes descriptors above 1024).
_kernel_poll = monkey.get_original("select", "poll")


class HasFileno(Protocol):
    def fileno(self) -> int: ...


def _ready_now(events: int, sockets: tuple[HasFileno | int, ...], milliseconds: int = 0) -> bool:
    poller = _kernel_poll()
    for sock in sockets:
        poller.register(sock, events)
    return bool(poller.poll(milliseconds))


def readable_now(*sockets: HasFileno | int) -> bool:
    """True when any of ``sockets`` (objects with ``fileno()``, or descriptors) has bytes
    to read, an error pending, or was closed by its peer; answers at once.

    POLLERR and POLLHUP are always reported, so a closed socket reads as readable.
    """
    return _ready_now(select.POLLIN, sockets)


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)``, at one system call when the kernel takes it all at once.

    It nearly always does for a request or response head: gevent's ``sendall`` first asks
    the kernel for the socket's send-buffer size (a ``getsockopt`` per call, to size its
    chunks), then sends. ``send`` waits, as ``sendall`` would, if the buffer is full, and
    honours the socket's timeout; what it leaves goes through ``sendall``.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def readable_within(sock: HasFileno | int, milliseconds: float) -> bool:
    """True once ``sock`` has bytes to read (or an error, or its peer closed), waiting at most
    ``milliseconds`` in the kernel without giving way to the worker's other greenlets.

    For a copy whose peer is likely sending at full speed: a wait through gevent's hub
    costs a whole loop turn, several milliseconds in a busy worker, where the peer refills
    the socket in microseconds.
    """
    try:
        return _ready_now(select.POLLIN, (sock,), max(0, round(milliseconds)))
    except ValueError:  # closed meanwhile: the caller's next read says so
        return True


def writable_now(sock: HasFileno | int) -> bool:
    """True when ``sock`` has room in its send buffer right now (or an error to report); answers at once."""
    return _ready_now(select.POLLOUT, (sock,))


def reset_on_close(sock: socket.socket) -> None:
    """``SO_LINGER`` on, 0 s: closing ``sock`` sends an RST, not a FIN, so a client that
    does not check lengths can never take a cut answer for a whole one."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


class Pacer:
    """Counts the bytes a copy loop moves and lets the other greenlets run every ``YIELD_EVERY`` bytes.

    A gevent greenlet only gives way when a socket would block; one whose peer keeps
    the socket full (an upload at full speed, a fast download to a fast client) never
    does, and every other client of its worker waits. ``gevent.idle()`` waits until the
    loop has polled I/O and run whatever was ready; ``gevent.sleep(0)`` only runs other
    ready greenlets, so a client waiting on a socket still waited (measured with
    ``bench/client_limits.py``: a normal client's p99 during a full-speed upload was
    26-350 ms with ``sleep(0)``, ~9 ms with ``idle()``, against ~4 ms alone; 256 KiB steps
    gave 20-30 ms).
    """

    __slots__ = ("every", "pending")

    def __init__(self, every: int = YIELD_EVERY) -> None:
        self.every = every
        self.pending = 0

    def moved(self, size: int) -> bool:
        """Count ``size`` bytes; True when the loop gave way just now."""
        self.pending += size
        if self.pending < self.every:
            return False
        self.pending = 0
        gevent.idle()
        return True
