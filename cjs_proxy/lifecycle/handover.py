"""Successor first: a worker that must go keeps accepting until its replacement does.

gunicorn's master replaces a worker only once it has exited. While the worker drains
(its in-flight requests, a long upload, idle keep-alive connections) and while its
replacement boots, one worker fewer accepts; with ``server.workers: 1``, or when every
worker reaches ``server.maxRequests`` at once, nobody does. Clients do not fail (the
listening socket stays open in the master and connections wait in its backlog), but
they wait for the whole drain plus a boot.

So a worker that must go (memory watchdog, ``server.maxRequests``) asks the master for
its successor first, and keeps serving. The channel is a pipe from the workers to the
master, read by a small thread in the master that does what gunicorn's own control
socket does for ``worker add`` (raise ``num_workers``, wake the arbiter); a pipe rather
than SIGTTIN because workers that dropped root may not signal their master:

1. the worker writes ``retire <pid>``: ``num_workers`` goes up by one and the arbiter
   starts a new worker at once;
2. every worker writes ``ready <pid>`` once it accepts; on the first one started after
   the request, the master sends SIGTERM to the retiring worker, which stops accepting
   and drains (gunicorn's graceful stop, up to ``graceful_timeout``);
3. when that worker exits (gunicorn's ``child_exit``), ``num_workers`` goes back down.

A reload (SIGHUP) replaces every worker anyway and resets ``num_workers``: pending
handovers are forgotten (``on_reload``). A worker with no channel (a master not set
up by ``gunicorn_conf``) stops accepting by itself.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

RETIRE = b"retire"
READY = b"ready"


class HandoverChannel:
    """The workers-to-master pipe, the master's thread serving it, and the handovers under way."""

    def __init__(self, arbiter: Any, kill: Callable[[int, int], None] = os.kill) -> None:
        self.arbiter = arbiter
        self.kill = kill
        self.read_fd, self.write_fd = os.pipe()
        # A worker must never block on a full pipe (if this thread were gone): it
        # gets EAGAIN and stops accepting the plain way instead.
        os.set_blocking(self.write_fd, False)
        self.lock = threading.Lock()  # the thread and the arbiter's own loop (``worker_exited``)
        #: Retiring workers, counted in ``num_workers`` until they exit.
        self.leaving: set[int] = set()
        #: Those of them still accepting, oldest request first, each waiting for a successor:
        #: (pid, the arbiter's ``worker_age`` when it asked; its successor's age is higher).
        self.waiting: list[tuple[int, int]] = []
        self.thread = threading.Thread(target=self._serve, name="cjs-proxy-handover", daemon=True)

    def start(self) -> None:
        self.thread.start()

    # ---------------------------------------------------------------- master side

    def _serve(self) -> None:
        pending = b""
        while True:
            data = os.read(self.read_fd, 4096)
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                verb, _, pid = line.partition(b" ")
                if pid.isdigit():
                    self.handle(verb, int(pid))

    def handle(self, verb: bytes, pid: int) -> None:
        """One message. Only the master's own workers are ever signalled (it may run as root)."""
        arbiter = self.arbiter
        with self.lock:
            if verb == RETIRE and pid in arbiter.WORKERS and pid not in self.leaving:
                arbiter.log.info("worker %s retiring: starting its successor before it stops accepting", pid)
                self.leaving.add(pid)
                self.waiting.append((pid, arbiter.worker_age))
                arbiter.num_workers += 1
                arbiter.wakeup()
            elif verb == READY and (worker := arbiter.WORKERS.get(pid)) is not None:
                # A worker started after a request is a successor, not a sibling. Take the
                # latest request it can stand for: an earlier one may still be matched by a
                # worker started before that later request (successors boot in any order).
                eligible = [entry for entry in self.waiting if entry[1] < worker.age]
                if eligible:
                    entry = max(eligible, key=lambda e: e[1])
                    self.waiting.remove(entry)
                    self._terminate(pid, entry[0])

    def _terminate(self, successor: int, retiring: int) -> None:
        self.arbiter.log.info("worker %s accepts: worker %s stops accepting and drains", successor, retiring)
        if retiring in self.arbiter.WORKERS:
            try:
                self.kill(retiring, signal.SIGTERM)
            except ProcessLookupError:
                pass  # gone already; worker_exited does the bookkeeping

    def worker_exited(self, pid: int) -> None:
        """In the arbiter's loop (``child_exit``), before it counts its workers again."""
        with self.lock:
            if pid not in self.leaving:
                return
            self.leaving.discard(pid)
            self.waiting = [entry for entry in self.waiting if entry[0] != pid]
            if self.arbiter.num_workers > self.arbiter.cfg.workers:
                self.arbiter.num_workers -= 1

    def reset(self) -> None:
        with self.lock:
            self.leaving.clear()
            self.waiting.clear()

    # ---------------------------------------------------------------- worker side

    def send(self, verb: bytes) -> bool:
        try:
            os.write(self.write_fd, b"%s %d\n" % (verb, os.getpid()))
        except OSError:
            return False
        return True


#: Set in the master by ``start``; forked workers inherit it.
_channel: HandoverChannel | None = None


# gunicorn hooks (``cjs_proxy.lifecycle.gunicorn_conf``), in the master unless noted.


def start(arbiter: Any) -> None:
    """``on_starting``: before the first worker. Once per master: a second call keeps the
    channel the workers already write to."""
    global _channel
    if _channel is not None:
        return
    _channel = HandoverChannel(arbiter)
    _channel.start()


def close_master_end() -> None:
    """``post_fork``, in the new worker: it only ever writes. A second call does nothing
    (closing the number again could close whatever file reused it)."""
    if _channel is not None and _channel.read_fd >= 0:
        os.close(_channel.read_fd)
        _channel.read_fd = -1


def worker_exited(pid: int) -> None:
    """``child_exit``."""
    if _channel is not None:
        _channel.worker_exited(pid)


def forget_pending() -> None:
    """``on_reload``: the reload replaces every worker and resets ``num_workers``."""
    if _channel is not None:
        _channel.reset()


# In the workers.


def request_successor() -> bool:
    """Ask for a successor before stopping; False when there is no channel to ask."""
    return _channel is not None and _channel.send(RETIRE)


def announce_ready() -> None:
    """Say that this worker accepts connections now (the oldest retiring worker may stop)."""
    if _channel is not None:
        _channel.send(READY)
