"""The client's request body on its way to a backend: read in steps, checked against its
declared length and ``server.maxRequestBodySize``, its first bytes read before any backend
connection is taken (see ``slow_clients``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from gunicorn.http.errors import NoMoreData, ParseException

from cjs_proxy.exceptions import BadRequest, ClientClosedRequest, PayloadTooLarge, RequestTimeout
from cjs_proxy.pipeline.slow_clients import PREREAD_BYTES, ClientWatch
from cjs_proxy.pipeline.sockets import Pacer

#: Bytes read from the client's body per step. A stalled upload holds up to one step's
#: worth in gunicorn's buffers, so steps are small; the worker reads the socket in steps
#: of the same size (``workers.client_connection.BODY_RECV_SIZE``), so gunicorn's reader
#: never buffers more than a step either and has little to copy on each read.
BODY_READ_SIZE = 64 * 1024


class RequestBody:
    """The client's body as an iterator of chunks, checked against its declared length.

    Its first ``PREREAD_BYTES`` are read before a backend connection is taken
    (``preread``, see ``slow_clients``); a body that fits is ``replayable``: it can be
    sent again on a retry, since no byte of it is left with the client.
    """

    def __init__(self, stream: BinaryIO, length: int | None, limit: int | None = None) -> None:
        self.stream = stream
        self.length = length
        self.limit = limit  # server.maxRequestBodySize, enforced as a chunked body streams
        #: Bytes handed to the backend by the current attempt.
        self.sent = 0
        #: Bytes read from the client.
        self.received = 0
        #: What ``preread`` read, sent first.
        self.buffered: list[bytes] = []
        #: True once the whole body has been read from the client into ``buffered``.
        self.complete = False
        #: Set while a pooled connection is held: the waits on the client are watched.
        self.watch: ClientWatch | None = None

    @property
    def replayable(self) -> bool:
        return self.complete

    def preread(self, limit: int = PREREAD_BYTES) -> None:
        """Read up to ``limit`` bytes before any backend connection is taken for this body."""
        while not self.complete and self.received < limit:
            chunk = self._next(limit - self.received)
            if not chunk:
                self.complete = True
                return
            self.buffered.append(chunk)
        if self.length is not None and self.received >= self.length:
            self.complete = True

    def __iter__(self) -> Iterator[bytes]:
        self.sent = 0
        if self.complete:  # the whole body is here: kept, so a retry can send it again
            for chunk in self.buffered:
                self.sent += len(chunk)
                yield chunk
            return
        while self.buffered:  # the pre-read start of a longer body: let go of it once sent
            chunk = self.buffered.pop(0)
            self.sent += len(chunk)
            yield chunk
        pacer = Pacer()  # a body at full speed never blocks: give way to the worker's other clients
        while True:
            chunk = self._watched_next(BODY_READ_SIZE)
            if not chunk:
                return
            self.sent += len(chunk)
            yield chunk
            pacer.moved(len(chunk))

    def _watched_next(self, most: int) -> bytes:
        watch = self.watch
        if watch is None:
            return self._next(most)
        watch.begin()
        try:
            return self._next(most)
        finally:
            watch.end()

    def _next(self, most: int) -> bytes:
        """The next piece of the body (at most ``most`` bytes); ``b""`` at its end."""
        remaining = None if self.length is None else self.length - self.received
        if remaining == 0:
            return b""
        chunk = self._read(most if remaining is None else min(most, remaining))
        if not chunk:
            if remaining:
                raise ClientClosedRequest(f"client sent {self.received} of {self.length} body bytes")
            return b""
        self.received += len(chunk)
        if self.limit is not None and self.received > self.limit:
            raise PayloadTooLarge(f"chunked body exceeds {self.limit} bytes")
        return chunk

    def _read(self, size: int) -> bytes:
        try:
            return self.stream.read(size)
        except NoMoreData as exc:
            raise ClientClosedRequest("client closed the connection mid-body") from exc
        except TimeoutError as exc:  # the client socket's timeout is server.bodyTimeout
            raise RequestTimeout(f"client sent nothing more after {self.received} body bytes") from exc
        except OSError as exc:
            raise ClientClosedRequest(f"client connection lost: {exc}") from exc
        except ParseException as exc:
            raise BadRequest(f"malformed request body: {exc}") from exc
