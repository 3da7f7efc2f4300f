"""The memory watchdog: a worker whose resident memory passes ``server.maxMemoryMB`` is replaced.

Hipache's workers grew over time, so it stopped any worker above a fixed RSS and let
the master start another; so does cjs-proxy, with a configurable limit and period. The
watchdog only measures and decides: what "replace" means (stop accepting, finish the
requests in flight, exit) is the worker's ``retire`` (``workers/gevent_proxy.py``),
passed in as ``on_exceeded``. Bodies are streamed, so an upload in flight does not
grow a worker: it is finished, not cut (Hipache's users lost 1 GB uploads, #98).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cjs_proxy.lifecycle.watchdog")

MIB = 1024 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from ``/proc/<pid>/statm`` (its second field, in pages)."""
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


class MemoryWatchdog:
    """Checks RSS every ``interval`` seconds; above ``limit_mb`` MiB it calls ``on_exceeded`` once.

    Before deciding, it runs a full garbage collection and measures again, as Hipache
    did, so that garbage alone never costs a worker. Run ``run`` in a greenlet: it
    returns after ``on_exceeded`` (the worker is on its way out). ``logger`` is the
    worker's (gunicorn's error log).
    """

    def __init__(self, limit_mb: int, interval: float, on_exceeded: Callable[[str], None],
                 read_rss: Callable[[], int] = rss_bytes, sleep: Callable[[float], None] | None = None,
                 collect: Callable[[], object] = gc.collect, logger: Any = log) -> None:
        self.limit = limit_mb * MIB
        self.interval = interval
        self.on_exceeded = on_exceeded
        self.read_rss = read_rss
        # Looked up now, not at import: in a worker, ``time.sleep`` is gevent's only once
        # monkeypatched, and the real one would freeze every request for ``interval``.
        self.sleep = sleep if sleep is not None else time.sleep
        self.collect = collect
        self.log = logger

    def check(self) -> bool:
        """One measurement; True (after calling ``on_exceeded``) when the worker is over the limit."""
        if self.read_rss() <= self.limit:
            return False
        self.collect()
        rss = self.read_rss()
        if rss <= self.limit:
            return False
        reason = f"resident memory {rss / MIB:.1f} MiB is above server.maxMemoryMB ({self.limit // MIB})"
        self.log.warning("worker %d: %s", os.getpid(), reason)
        self.on_exceeded(reason)
        return True

    def run(self) -> None:
        rss = self.read_rss()
        if rss > self.limit:
            self.log.warning("worker %d already uses %.1f MiB at start, above server.maxMemoryMB (%d): "
                        "every worker will be replaced after server.memoryCheckInterval (%gs); "
                        "raise the limit", os.getpid(), rss / MIB, self.limit // MIB, self.interval)
        while True:
            self.sleep(self.interval)
            if self.check():
                return
