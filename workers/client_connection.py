"""A client connection's clocks and budgets, as nginx keeps them (README "Limits and timeouts").

gunicorn reads request heads itself, through the socket the worker hands it; the only
bound it puts on a head is its keep-alive ``gevent.Timeout``, which covers the idle wait
and the head together, and none at all on a connection's first request when keep-alive
is off. ``ClientConnection`` is that socket, wrapped: while gunicorn waits for a head,
each ``recv`` is given what is left of the head's time (``server.headerTimeout``,
counted from the connection's start, or from the first byte of a later keep-alive
request) and the head's byte budget (``server.maxHeaderBytes``). While the application
runs, reads wait at most ``server.bodyTimeout`` (the body); once it has answered, writes
wait at most ``server.sendTimeout``. Everything else is the real socket's.

``ClientBody`` notes whether the application read the request body to its end; an
answer given before that closes the connection after ``linger`` has discarded what the
client still sends for up to ``server.lingerTime`` seconds.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from typing import Any

from gunicorn.http.errors import LimitRequestHeaders

from cjs_proxy.config.views import ClientLimits
from cjs_proxy.pipeline.sockets import Pacer, send_all

log = logging.getLogger("cjs_proxy.client")

#: Largest read of a request body from the socket. gunicorn's readers copy what they
#: buffered on every read, and a stalled upload holds one read's worth: small reads keep
#: both small (300 stalled uploads must cost a worker less than 64 MiB).
BODY_RECV_SIZE = 64 * 1024
#: Bytes read per step while lingering.
LINGER_READ_SIZE = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: A connection's first head gets ``server.headerTimeout`` and up to this share more, drawn per
#: connection, so that connections opened together are not all cut in the same loop turn: the
#: abuse benchmark's slowloris clients come 50 at a time, and cutting 50 costs a worker 4 ms in
#: one turn (80 us each), which a normal request that lands in that turn waits for.
HEAD_DEADLINE_SPREAD = 0.1


class ClientConnection:
    """The client socket as gunicorn sees it, with the clock of the current phase.

    Phases: ``head`` (a request head is being read, against a deadline and a byte
    budget), ``idle`` (between keep-alive requests: the first byte of the next head is
    awaited for ``server.keepAliveTimeout``), ``request`` (the application runs: reads
    are the body's). A head that runs out of time reads as the client having closed,
    which gunicorn handles by closing the connection without an answer, as nginx does.
    """

    def __init__(self, sock: Any, limits: ClientLimits) -> None:
        self.sock = sock
        self.limits = limits
        self.phase = "head"
        self.head_deadline = time.monotonic() + limits.header_timeout * (1 + HEAD_DEADLINE_SPREAD * random.random())
        self.head_bytes = 0
        #: Set when the answer was given before the body was read: ``linger`` before closing.
        self.must_linger = False

    @property
    def wrapped(self) -> Any:
        """The real socket (TLS or not)."""
        return self.sock

    def recv(self, size: int, *flags: int) -> bytes:
        if self.phase == "request":
            return self.sock.recv(min(size, BODY_RECV_SIZE), *flags)
        if self.phase == "idle":
            return self._first_byte(size)
        return self._head_part(size)

    def _first_byte(self, size: int) -> bytes:
        """The start of the next keep-alive request, awaited for ``server.keepAliveTimeout``."""
        data = self._recv_within(self.limits.keep_alive_timeout, min(size, self.limits.max_header_bytes),
                                 "keep-alive timeout")
        if data:
            self.phase = "head"
            self.head_deadline = time.monotonic() + self.limits.header_timeout
            self.head_bytes = len(data)
        return data

    def _head_part(self, size: int) -> bytes:
        """More of a head gunicorn has not found the end of: within its time and byte budget.

        Reads never go past the budget, so a head that ends within it is found within it,
        and gunicorn asking for more once it is spent means the head is too large.
        """
        budget = self.limits.max_header_bytes - self.head_bytes
        if budget <= 0:
            raise LimitRequestHeaders(f"request head over {self.limits.max_header_bytes} bytes")
        data = self._recv_within(self.head_deadline - time.monotonic(), min(size, budget), "header timeout")
        self.head_bytes += len(data)
        return data

    def _recv_within(self, seconds: float, size: int, what: str) -> bytes:
        """One read that waits at most ``seconds``; nothing (the client "closed") past them."""
        if seconds <= 0:
            log.debug("closing client connection: %s", what)
            return b""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(size)
        except TimeoutError:
            log.debug("closing client connection: %s", what)
            return b""

    def request_started(self) -> None:
        """gunicorn parsed a head: the application runs, reads wait ``server.bodyTimeout``."""
        self.phase = "request"
        self.must_linger = False
        self.sock.settimeout(self.limits.body_timeout)

    def response_started(self) -> None:
        """The application answered: writes wait at most ``server.sendTimeout``."""
        self.sock.settimeout(self.limits.send_timeout)

    def request_ended(self) -> None:
        """The response is out: the connection waits, idle, for the next request."""
        self.phase = "idle"

    def sendall(self, data: bytes, *flags: int) -> None:
        if flags:
            self.sock.sendall(data, *flags)
        else:
            send_all(self.sock, data)

    def send(self, data: bytes, *flags: int) -> int:
        return int(self.sock.send(data, *flags))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def linger(self) -> None:
        """Discard what the client still sends for up to ``server.lingerTime``, then let it close.

        Closing a socket with unread bytes makes the kernel send a reset, which can
        destroy the answer before the client read it; draining without bound lets one
        client stream into the worker for as long as it likes (and a socket that never
        runs dry never lets the other clients run). So: our side is shut for writing
        (the client sees the end), then reads go on until the client closes, goes
        silent past the deadline, or the deadline passes, yielding as they go.
        """
        deadline = time.monotonic() + self.limits.linger_time
        pacer = Pacer()
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                self.sock.settimeout(remaining)
                data = self.sock.recv(LINGER_READ_SIZE)
                if not data:
                    return
                pacer.moved(len(data))
        except OSError:  # timed out, reset or already gone: closing is all that is left
            return


class ClientBody:
    """The request body (``wsgi.input``) as gunicorn reads it, noting whether it was read to its end.

    ``complete`` is what decides, once the application has answered, whether the
    connection can serve another request (the next head starts right after the body)
    or must be closed after lingering (``ClientConnection.linger``).
    """

    def __init__(self, req: Any, body: Any, length: int | None) -> None:
        self.req = req
        self.body = body
        #: Declared length (``Content-Length``); None for a chunked body, read until its end.
        self.length = length
        self.received = 0
        self.ended = length == 0
        self.timed_out = False

    @classmethod
    def track(cls, req: Any) -> ClientBody | None:
        """Wrap ``req.body`` (already a ``ContinueOnRead`` when deferred); None without a body."""
        if req.body is None:
            return None
        length: int | None = None
        if not getattr(req, "chunked", False):
            declared = dict(req.headers).get("CONTENT-LENGTH", "0")
            length = int(declared) if declared.isdigit() else 0
        tracked = cls(req, req.body, length)
        req.body = tracked
        return tracked

    @property
    def complete(self) -> bool:
        return self.ended or (self.length is not None and self.received >= self.length)

    def answered(self, conn: ClientConnection) -> None:
        """The application answered: if the body was not read to its end, where the next
        request would start is unknown, so the answer says ``Connection: close``, and the
        connection lingers before it closes (unless the client went silent: nothing to wait for)."""
        if not self.complete:
            self.req.force_close()
            conn.must_linger = not self.timed_out

    def read(self, size: int | None = None) -> bytes:
        try:
            data: bytes = self.body.read(size)
        except TimeoutError:
            self.timed_out = True
            raise
        self.received += len(data)
        if not data or (size is not None and 0 < len(data) < size):
            self.ended = True
        return data

    def readline(self, size: int | None = None) -> bytes:
        data: bytes = self.body.readline(size)
        self.received += len(data)
        self.ended = self.ended or not data
        return data

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.body, name)


class ContinueOnRead:
    """The body (``wsgi.input``) of an ``Expect: 100-continue`` request, sending ``100
    Continue`` on the first read instead of as soon as the head is parsed.

    gunicorn sends it in ``gunicorn.http.wsgi.create`` when the parser set
    ``req._expected_100_continue``; clearing that flag before and wrapping ``req.body``
    moves it to when the application first reads the body: after routing, the Host
    checks and the rate limits, so a client answered 400, 413 or 429 never sends its body.

    Until the client has been told to go on, the connection is marked to close after the
    response: the client may or may not send the body it withheld, so where the next
    request would start is unknown (RFC 9110 10.1.1). Once ``100 Continue`` is sent, the
    request's own keep-alive decision is restored.
    """

    def __init__(self, req: Any, sock: Any) -> None:
        self.req = req
        self.sock = sock
        self.body = req.body
        self.pending = True
        self.close_after = req.must_close

    @classmethod
    def defer(cls, req: Any, sock: Any) -> ContinueOnRead | None:
        """Take the ``100 Continue`` of ``req`` over from gunicorn, if it expects one."""
        if not getattr(req, "_expected_100_continue", False) or req.body is None:
            return None
        req._expected_100_continue = False
        if dict(req.headers).get("CONTENT-LENGTH") == "0":
            return None  # nothing withheld: the final answer alone is enough
        deferred = cls(req, sock)
        req.body = deferred
        req.force_close()
        return deferred

    def _go_on(self) -> None:
        if self.pending:
            self.pending = False
            self.sock.sendall(CONTINUE)
            self.req.must_close = self.close_after

    def read(self, size: int | None = None) -> bytes:
        self._go_on()
        return self.body.read(size)

    def readline(self, size: int | None = None) -> bytes:
        self._go_on()
        return self.body.readline(size)

    def readlines(self, size: int | None = None) -> list[bytes]:
        self._go_on()
        return self.body.readlines(size)

    def __iter__(self) -> Any:
        self._go_on()
        return iter(self.body)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.body, name)
