"""Non-blocking readiness checks that stay out of gevent's hub.

The workers are monkeypatched, so ``select.poll`` is gevent's: even with a zero timeout
it starts a watcher, arms a timer and switches to the hub and back (about 15 us against
1 us, measured on a Redis connection). The checks here run on every request (is a pooled
backend connection still silent? did Redis announce a routing change?) and must only
ask the kernel, never wait: a zero-timeout poll cannot block, so the original one is safe.
"""

from __future__ import annotations

import select
from typing import Protocol

from gevent import monkey

#: The kernel's poll, not gevent's (poll, unlike select, takes descriptors above 1024).
_kernel_poll = monkey.get_original("select", "poll")


class HasFileno(Protocol):
    def fileno(self) -> int: ...


def readable_now(*sockets: HasFileno | int) -> bool:
    """True when any of ``sockets`` (objects with ``fileno()``, or descriptors) has bytes
    to read, an error pending, or was closed by its peer; answers at once.

    POLLERR and POLLHUP are always reported, so a closed socket reads as readable.
    """
    poller = _kernel_poll()
    for sock in sockets:
        poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def writable_now(sock: HasFileno | int) -> bool:
    """True when ``sock`` has room in its send buffer right now (or an error to report); answers at once."""
    poller = _kernel_poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))
