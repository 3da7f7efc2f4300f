"""Strict HTTP/1.1 towards backends: the request head we write, the responses we accept.

Backends are tenants' code. Whatever bytes one sends, no response may reach another
client and no pooled connection may be reused in an unknown state, so responses are
read by llhttp (Node's parser, through ``httptools``) in its strict mode, one head at a
time: the head is located (CRLF CRLF) and parsed on its own, so an informational answer
(1xx) is seen as such and never taken for the final one; the body is then framed by
the same parser. The rules beyond llhttp's own (RFC 9112 section 6):

- a ``Transfer-Encoding`` other than exactly ``chunked`` is refused, as nginx does;
- ``Transfer-Encoding`` with ``Content-Length``: chunked framing wins, the length is
  not relayed, and the connection is closed after the response;
- repeated identical ``Content-Length`` values are one value; differing ones are refused;
- ``101`` is accepted only for a WebSocket upgrade, and only if it answers ``websocket``;
- a connection is reusable only after a complete response, framed without ambiguity,
  with nothing after it, from an HTTP/1.1 peer that did not ask to close.

Every refusal is a ``BackendProtocolError`` (502) raised before anything is relayed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Generator
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from cjs_proxy.exceptions import BackendClosed, BackendProtocolError, BackendTimeout, BackendUnavailable
from cjs_proxy.pipeline.sockets import Pacer, readable_within

#: Milliseconds ``read_rest_into`` may wait in the kernel for a backend's next bytes between two
#: times it gives way (``Pacer``): a spool filled through gevent's hub took 34 ms for 4 MiB in
#: the abuse benchmark (a loop turn per refill of the socket), 1-4 ms this way.
BRIEF_WAIT_MS = 2.0
#: Largest response head accepted from a backend (nginx's proxy_buffer_size is 4-8 KiB).
MAX_HEAD = 64 * 1024
#: Informational (1xx) answers accepted before the final one.
MAX_INFORMATIONAL = 8
#: Bytes asked of the backend socket per read.
RECV_SIZE = 64 * 1024


class UpstreamBroken(Exception):
    """The backend failed after its response started; the client connection must be cut."""


def encode_request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """The request head exactly as the backend will read it.

    The target is written byte for byte as the client sent it (gunicorn hands it over
    decoded as latin-1). Values come from gunicorn's strict parser, the proxy itself
    or Redis; a CR, LF or NUL among them would split the head, so it is refused.
    """
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    head = "\r\n".join(lines)
    separators = len(lines) - 1
    if head.count("\r") != separators or head.count("\n") != separators or "\0" in head:
        raise BackendProtocolError("refusing to write a request head with CR, LF or NUL in a field")
    return (head + "\r\n\r\n").encode("latin-1")


class ResponseHead:
    """The final response head, validated; ``headers`` are ready to relay (framing removed)."""

    __slots__ = ("chunked", "content_length", "headers", "keep_alive", "raw", "reason", "status")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], raw: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.raw = raw
        self.chunked = False
        self.content_length: int | None = None
        self.keep_alive = True


class _Message:
    """httptools callbacks for one response: collects the head, then the body pieces."""

    __slots__ = ("begun", "body", "complete", "framing", "headers", "headers_done", "reason")

    def __init__(self) -> None:
        self.begun = False
        self.headers: list[tuple[bytes, bytes]] = []
        #: ``Content-Length``, ``Transfer-Encoding`` and ``Connection`` (lower-cased names),
        #: set apart as they arrive so framing is decided without another pass.
        self.framing: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False

    def on_message_begin(self) -> None:
        if self.begun:  # a second message in the same bytes: the backend sent more than asked
            raise _Unsolicited()
        self.begun = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:  # trailers of a chunked body are not relayed
            return
        if len(name) in _FRAMING_LENGTHS and (lower := name.lower()) in _FRAMING:
            self.framing.append((lower, value))
            if lower != b"connection":
                return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_FRAMING_LENGTHS = frozenset(len(name) for name in _FRAMING)


class _Unsolicited(Exception):
    """Bytes after a complete response: the connection cannot be reused."""


def _new_parser(message: _Message) -> Any:
    parser = HttpResponseParser(message)
    # Let Transfer-Encoding and Content-Length coexist so chunked framing can win
    # (RFC 9112 6.3); such a connection is closed after the response (``_frame``).
    parser.set_dangerous_leniencies(lenient_chunked_length=True)
    return parser


class ResponseReader:
    """Reads one response from a backend socket: the head (after any 1xx), then the body.

    ``reusable`` says, once the body has been read to its end, whether the connection
    may serve another request.
    """

    def __init__(self, sock: socket.socket, backend_url: str) -> None:
        self.sock = sock
        self.backend_url = backend_url
        self.buffer = b""
        self.received_any = False
        self.head: ResponseHead | None = None
        self.reusable = False
        self.complete = False
        self.bytes_read = 0
        self._message = _Message()
        self._parser: Any = None
        #: Body pieces parsed and not handed out yet by ``iter_body``.
        self._pending: list[bytes] = []

    # ------------------------------------------------------------------ the head

    def read_head(self, method: str, upgrade: str | None = None,
                  on_informational: Callable[[ResponseHead], None] | None = None) -> ResponseHead:
        """The final response head; ``upgrade`` is the protocol the request asked for, if any."""
        for _ in range(MAX_INFORMATIONAL + 1):
            head = self._parse_head(self._read_head_bytes())
            if head.status == 101:
                self._check_upgrade(head, upgrade)
                self.head = head
                return head
            if head.status >= 200:
                self.head = head
                self._frame(head, method)
                return head
            if on_informational is not None:
                on_informational(head)
        raise BackendProtocolError(f"{self.backend_url}: more than {MAX_INFORMATIONAL} informational responses")

    def _read_head_bytes(self) -> bytes:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        while end < 0:
            if len(buffer) > MAX_HEAD:
                raise BackendProtocolError(f"{self.backend_url}: response head larger than {MAX_HEAD} bytes")
            if buffer.count(b"\n") != buffer.count(b"\r\n"):
                raise BackendProtocolError(f"{self.backend_url}: bare LF in the response head")
            chunk = self._recv_head()
            if not chunk:
                if not self.received_any:
                    raise BackendClosed(f"{self.backend_url}: closed the connection before answering")
                raise BackendProtocolError(f"{self.backend_url}: closed the connection mid-head")
            self.received_any = True
            start = max(0, len(buffer) - 3)
            buffer += chunk
            end = buffer.find(b"\r\n\r\n", start)
        end += 4
        if end > MAX_HEAD:
            raise BackendProtocolError(f"{self.backend_url}: response head larger than {MAX_HEAD} bytes")
        self.buffer = buffer[end:]
        return buffer[:end]

    def _recv_head(self) -> bytes:
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError as exc:
            raise BackendTimeout(f"{self.backend_url}: no answer within {self.sock.gettimeout()}s") from exc
        except ConnectionResetError as exc:
            if not self.received_any:
                raise BackendClosed(f"{self.backend_url}: connection reset before answering") from exc
            raise BackendUnavailable(f"{self.backend_url}: connection reset mid-head") from exc
        except OSError as exc:
            raise BackendUnavailable(f"{self.backend_url}: {exc}") from exc

    def _parse_head(self, raw: bytes) -> ResponseHead:
        if not raw.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):  # llhttp also takes RTSP/ and ICE/
            raise BackendProtocolError(f"{self.backend_url}: not an HTTP/1.x status line: {raw[:40]!r}")
        message = _Message()
        parser = _new_parser(message)
        try:
            parser.feed_data(raw)
        except HttpParserUpgrade:
            if parser.get_status_code() != 101:
                raise BackendProtocolError(f"{self.backend_url}: upgrade without 101") from None
        except HttpParserError as exc:
            canonical = _with_one_content_length(raw, self.backend_url)
            if canonical is None:
                raise BackendProtocolError(f"{self.backend_url}: invalid response head: {exc}") from exc
            return self._parse_head(canonical)
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            raise BackendProtocolError(f"{self.backend_url}: invalid status {status}")
        self._message, self._parser = message, parser
        head = ResponseHead(status, message.reason.decode("latin-1"),
                            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in message.headers], raw)
        head.keep_alive = raw[7] == 49  # HTTP/1.1; 1.0 keep-alive is not worth the doubt
        return head

    def _check_upgrade(self, head: ResponseHead, upgrade: str | None) -> None:
        if upgrade is None:
            raise BackendProtocolError(f"{self.backend_url}: 101 Switching Protocols to a request without Upgrade")
        answered = ",".join(v for n, v in head.headers if n.lower() == "upgrade").strip().lower()
        if answered != upgrade:
            raise BackendProtocolError(f"{self.backend_url}: 101 switching to {answered!r}, not {upgrade!r}")
        self.reusable = False
        self.complete = True

    def _frame(self, head: ResponseHead, method: str) -> None:
        """Decide the body's framing and whether the connection can be reused after it."""
        lengths: list[bytes] = []
        codings: list[bytes] = []
        for name, value in self._message.framing:
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.extend(t.strip().lower() for t in value.split(b","))
            elif b"close" in (t.strip().lower() for t in value.split(b",")):
                head.keep_alive = False
        if codings:
            if codings != [b"chunked"]:
                raise BackendProtocolError(f"{self.backend_url}: unsupported Transfer-Encoding {codings}")
            head.chunked = True
            if lengths:  # both: chunked wins, and this connection's framing is suspect
                head.keep_alive = False
        elif lengths:
            head.content_length = int(lengths[0])  # llhttp (or the canonical head) left one value
            head.headers.append(("Content-Length", lengths[0].decode("latin-1")))
        no_body = method == "HEAD" or head.status in (204, 304)
        if not no_body and not codings and not lengths:
            head.keep_alive = False  # the body ends when the backend closes
        if no_body or self._message.complete:
            self._finish(extra=bool(self.buffer))

    def _finish(self, extra: bool) -> None:
        self.complete = True
        self.reusable = self.head is not None and self.head.keep_alive and not extra
        self.buffer = b""

    # ------------------------------------------------------------------ the body

    def iter_body(self) -> Generator[bytes, None, None]:
        """The body as it arrives, de-framed; raises ``UpstreamBroken`` if it is cut short."""
        if self.complete:
            return
        data, self.buffer = self.buffer, b""
        while True:
            if data:
                extra = self._feed(data)
                pieces = self._pending = self._message.body
                self._message.body = []
                while pieces:  # what is left of it after a yield is the spool's (``read_rest_into``)
                    piece = pieces.pop(0)
                    self.bytes_read += len(piece)
                    yield piece
                if self._message.complete:
                    self._finish(extra)
                    return
            data = self._recv_body()
            if not data:
                if self.head is not None and not self.head.chunked and self.head.content_length is None:
                    self._finish(extra=False)  # read-until-close framing: complete now, never reused
                    return
                raise UpstreamBroken(f"{self.backend_url}: body cut short after {self.bytes_read} bytes")

    def _feed(self, data: bytes) -> bool:
        """Parse body bytes; true when some came after the end of the response."""
        try:
            self._parser.feed_data(data)
        except HttpParserError as exc:
            if not self._message.complete:
                raise UpstreamBroken(f"{self.backend_url}: invalid body after {self.bytes_read} bytes: {exc}") from exc
            return True
        return False

    def _recv_body(self) -> bytes:
        try:
            return self.sock.recv(RECV_SIZE)
        except OSError as exc:
            raise self._body_broken(exc) from exc

    def _body_broken(self, exc: OSError) -> UpstreamBroken:
        if isinstance(exc, TimeoutError):
            return UpstreamBroken(f"{self.backend_url}: body stalled after {self.bytes_read} bytes")
        return UpstreamBroken(f"{self.backend_url}: body broken after {self.bytes_read} bytes: {exc}")

    def unread_length(self) -> int | None:
        """Bytes of a ``Content-Length`` body that ``iter_body`` has not handed out yet; None when
        the body is framed otherwise (chunked, until close) or already complete."""
        head = self.head
        if self.complete or head is None or head.chunked or head.content_length is None:
            return None
        return head.content_length - self.bytes_read

    def read_rest_into(self, sink: Callable[[memoryview], None], buffer: bytearray, pacer: Pacer) -> None:
        """Read what is left of a ``Content-Length`` body into ``sink``, around the parser.

        For a spool (``spool``): the rest of a large answer is copied through one reused
        ``buffer`` instead of a new bytes object per piece, twice (the receive, the parser's
        copy). Call it only while ``iter_body`` waits at a yield, or before it started:
        the pieces it parsed and has not handed out come first, then the socket's bytes, up
        to the length and not one more. Completes the response; ``UpstreamBroken`` if the
        backend cuts it short.
        """
        remaining = self.unread_length()
        if remaining is None:
            raise ValueError("read_rest_into needs an unfinished Content-Length body")
        early = [*self._pending, self.buffer] if self.buffer else list(self._pending)
        self._pending.clear()
        self.buffer = b""
        extra = False
        for data in early:
            taken = memoryview(data)[:remaining]
            extra = extra or len(taken) < len(data)
            sink(taken)
            remaining -= len(taken)
            self.bytes_read += len(taken)
        view = memoryview(buffer)
        brief = BRIEF_WAIT_MS  # what is left of the kernel waits allowed before the loop gives way
        while remaining > 0:
            if brief > 0:  # else (or if the backend is slower) recv_into waits through the hub
                started = time.monotonic()
                readable_within(self.sock, brief)
                brief -= (time.monotonic() - started) * 1000
            received = self._recv_body_into(view[:min(len(view), remaining)])
            if not received:
                raise UpstreamBroken(f"{self.backend_url}: body cut short after {self.bytes_read} bytes")
            sink(view[:received])
            remaining -= received
            self.bytes_read += received
            if pacer.moved(received):
                brief = BRIEF_WAIT_MS
        self._finish(extra)

    def _recv_body_into(self, view: memoryview) -> int:
        try:
            return self.sock.recv_into(view)
        except OSError as exc:
            raise self._body_broken(exc) from exc

    def leftover(self) -> bytes:
        """Bytes the backend sent after a ``101`` head: the first bytes of the new protocol."""
        data, self.buffer = self.buffer, b""
        return data


def _with_one_content_length(raw: bytes, backend_url: str) -> bytes | None:
    """The head with repeated identical ``Content-Length`` values folded into one.

    llhttp refuses ``Content-Length: 5, 5`` and two ``Content-Length: 5`` lines; RFC 9112
    6.3 lets a recipient take them as one value. Differing values are refused. Returns
    None when the head's problem is not about ``Content-Length`` at all.
    """
    lines = raw[:-4].split(b"\r\n")
    values: list[bytes] = []
    kept = [lines[0]]
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.lower() == b"content-length":
            values.extend(v.strip(b" \t") for v in value.split(b","))
        else:
            kept.append(line)
    if len(values) < 2:
        return None
    if len(set(values)) != 1 or not values[0].isdigit():
        raise BackendProtocolError(f"{backend_url}: conflicting Content-Length values {sorted(set(values))}")
    kept.append(b"Content-Length: " + values[0])
    return b"\r\n".join(kept) + b"\r\n\r\n"
