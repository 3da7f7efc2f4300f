"""Answers their clients do not take are spooled, and their backend connection given back.

``slow_clients`` keeps slow transfers to a share of each pool and cuts the slowest when
the pool is wanted; a client that never reads its answer still holds a pooled connection
until then. In the abuse benchmark 100 such clients on the normal client's own address
(which ``fair_share`` cannot tell apart) were cut 1,800 times in 40 s, reconnected at
once, and took the freed connections: the normal client's p99 was 88 ms against 1.7 ms.
nginx reads such answers into buffers and temporary files (``proxy_buffering``) and
frees the upstream connection; so does this, for the answers it can bound.

When a transfer is found slow while relaying an answer of known length (a sweep with no
progress, or a full send buffer while the pool is wanted), the rest of the answer, if
at most ``server.spoolMaxBytes`` and within the worker's ``SpoolBudget``, is copied by a
greenlet of its own into an unnamed temporary file (``TMPDIR``, else the system's
temporary directory; gone with its descriptor) while the client's write waits, and the
connection goes back to its pool. The copy goes through one reused buffer straight from
the socket (``ResponseReader.read_rest_into``): no bytes object per piece, so 400 MiB
of spooled answers do not pass through the worker's allocator. The client is then fed
from the file; a backend that broke mid-copy still resets the client once the bytes that
came are out. Past the budget, or for an answer of unknown length, the transfer keeps
its connection and the slow lanes decide, as before.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from cjs_proxy.eventlog import EventLog
from cjs_proxy.pipeline.http1 import ResponseReader, UpstreamBroken
from cjs_proxy.pipeline.sockets import Pacer

log = logging.getLogger("cjs_proxy.pipeline.spool")

#: Largest rest of one answer that is spooled (``server.spoolMaxBytes``).
MAX_ANSWER = 16 * 1024 * 1024
#: Spooled bytes a worker holds at once, over all its clients (``server.spoolBytesPerWorker``).
WORKER_BUDGET = 1024 * 1024 * 1024
#: Bytes read back per piece handed to the client: small, since a client that does not read
#: holds its piece for as long as ``server.sendTimeout`` (the kernel's send buffer holds more).
READ_SIZE = 16 * 1024
#: Bytes copied from the backend per system call into the spool.
COPY_SIZE = 256 * 1024
#: Spools a worker fills at once (the others wait their turn, holding their connection).
FILLS = 2


class SpoolBudget:
    """A worker's spooled bytes: taken before an answer is spooled, given back when its client is
    done; and its spools being filled, a few at a time, each through a buffer lent by this.

    Filled all at once, 100 answers of 4 MiB each gave their connections back together, after
    the whole 400 MiB was read (a normal request waited 0.7-1.0 s for one); filled a few at a
    time, the first come back within milliseconds.
    """

    __slots__ = ("_buffers", "events", "filling", "limit", "max_answer", "used")

    def __init__(self, limit: int = WORKER_BUDGET, fills: int = FILLS, max_answer: int = MAX_ANSWER) -> None:
        self.limit = limit
        self.max_answer = max_answer
        self.used = 0
        self.filling = BoundedSemaphore(fills)
        self._buffers: list[bytearray] = []
        self.events = EventLog(log)

    @classmethod
    def configured(cls, max_answer: int, limit: int) -> SpoolBudget | None:
        """A worker's budget from ``server.spoolMaxBytes`` and ``server.spoolBytesPerWorker``;
        None (no spooling) when either is 0."""
        return cls(limit, max_answer=max_answer) if max_answer and limit else None

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            self.events.record("budget", f"spool budget spent ({self.used} of {self.limit} bytes): "
                                         "slow clients keep their backend connections")
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size

    def lend_buffer(self) -> bytearray:
        return self._buffers.pop() if self._buffers else bytearray(COPY_SIZE)

    def return_buffer(self, buffer: bytearray) -> None:
        self._buffers.append(buffer)


class Spool:
    """The rest of one answer in an unnamed temporary file: written at the backend's pace, read at the client's."""

    __slots__ = ("_file", "budget", "error", "size", "written")

    def __init__(self, budget: SpoolBudget, size: int) -> None:
        self.budget = budget
        #: Bytes reserved in ``budget`` (the rest of the answer, as its length says).
        self.size = size
        self.written = 0
        self._file = tempfile.TemporaryFile(buffering=0)  # O_TMPFILE where the kernel has it
        #: What stopped the backend's body early, raised to the client's side once the bytes are out.
        self.error: Exception | None = None

    def write(self, data: memoryview) -> None:
        """Append ``data`` (a page-cache write: the kernel takes it without waiting on the disk)."""
        if self.closed:
            raise UpstreamBroken("the client went away while its answer was being spooled")
        fd = self._file.fileno()
        while data:
            written = os.write(fd, data)
            data = data[written:]
            self.written += written

    def chunks(self) -> Iterator[bytes]:
        """The spooled bytes, then the backend's error if it broke; the spool is closed after."""
        try:
            fd = self._file.fileno()
            offset = 0
            while offset < self.written:
                data = os.pread(fd, min(READ_SIZE, self.written - offset), offset)
                if not data:
                    raise UpstreamBroken(f"spool file shorter than written ({offset} of {self.written} bytes)")
                offset += len(data)
                yield data
            if self.error is not None:
                raise self.error
        finally:
            self.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        """Delete the spool and give its bytes back to the budget (idempotent)."""
        if not self._file.closed:
            self._file.close()
            self.budget.give_back(self.size)


class SpoolingBody:
    """An answer's body that can move, mid-way, from its backend connection into a ``Spool``.

    Iterated by the relay (in the exchange's greenlet). ``spool_rest`` is called from
    elsewhere while that greenlet waits on its client: a greenlet of its own then copies
    what is left into a spool and calls ``give_back`` (the connection to its pool); the
    relay, once the client takes its piece, waits for the spool to be filled and goes on
    from it.
    """

    def __init__(self, reader: ResponseReader, budget: SpoolBudget, give_back: Callable[[], None]) -> None:
        self.reader = reader
        self.budget = budget
        self.give_back = give_back
        self._spool: Spool | None = None
        self._filled = Event()

    def __iter__(self) -> Iterator[bytes]:
        body = self.reader.iter_body()
        try:
            while self._spool is None:
                try:
                    chunk = next(body)
                except StopIteration:
                    return
                yield chunk
                chunk = b""  # not kept alive beside the spool's pieces (a non-reader holds one for minutes)
        finally:
            body.close()  # suspended at a yield: nothing more is read through it
        self._filled.wait()
        yield from self._spool.chunks()

    def spool_rest(self) -> bool:
        """Spool what the client has not been handed yet, and give the connection back once it is
        read; False when that cannot be bounded (unknown length, over the largest spool or the budget)."""
        size = self.reader.unread_length()
        if self._spool is not None or size is None or size > self.budget.max_answer or not self.budget.take(size):
            return False
        try:
            self._spool = Spool(self.budget, size)
        except OSError as exc:
            self.budget.give_back(size)
            self.budget.events.record("tmpfile", f"no spool file ({exc}): slow clients keep their connections")
            return False
        gevent.spawn(self._fill, self._spool)
        return True

    def _fill(self, spool: Spool) -> None:
        try:
            with self.budget.filling:
                if spool.closed:  # the client went away while this fill waited its turn
                    return
                buffer = self.budget.lend_buffer()
                try:
                    self.reader.read_rest_into(spool.write, buffer, Pacer(COPY_SIZE))
                except UpstreamBroken as exc:  # the client learns of it after the bytes that did arrive
                    spool.error = exc
                except OSError as exc:  # the spool's disk: the connection is closed, the client reset
                    spool.error = UpstreamBroken(f"{self.reader.backend_url}: spool write failed: {exc}")
                    self.budget.events.record("write", f"spool write failed: {exc}")
                finally:
                    self.budget.return_buffer(buffer)
        finally:
            self._filled.set()
            self.give_back()

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
