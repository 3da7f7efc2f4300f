"""WebSocket tunnelling: relay the upgrade to the backend, then pipe raw bytes both ways.

The upgrade request is routed, limited and rewritten like any other request, then
sent on a fresh backend connection. A ``101`` answer is relayed verbatim to the client
socket taken from gunicorn (``gunicorn.socket``) and two greenlets copy bytes in each
direction until both sides are done; frames are never parsed, so any subprotocol and
binary frames pass unchanged. Any other answer is relayed as a normal HTTP response.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import gevent

from .exceptions import BackendTimeout, BackendUnavailable
from .headers import HOP_BY_HOP

log = logging.getLogger("cjs_proxy.websocket")

#: Bytes copied per step in each direction.
PIPE_CHUNK = 64 * 1024
#: Seconds a tunnel stays half-open after one side finished, for the other to finish too
#: (nginx ends an upgraded connection when either side does; this lets in-flight bytes
#: and a closing handshake through first).
HALF_CLOSE_GRACE = 5.0
#: Largest response head accepted from a backend.
MAX_HEAD = 64 * 1024


def is_upgrade(environ: dict[str, Any]) -> bool:
    """A WebSocket upgrade: ``Upgrade: websocket`` with ``Connection: upgrade``."""
    upgrade = environ.get("HTTP_UPGRADE", "").lower()
    connection = environ.get("HTTP_CONNECTION", "").lower()
    return "websocket" in upgrade and "upgrade" in connection


def connect(backend_url: str, timeout: float) -> socket.socket:
    """A connection to the backend (TLS for ``https://`` backends); errors as ``ProxyError``."""
    parts = urlsplit(backend_url)
    secure = parts.scheme in ("https", "wss")
    address = (parts.hostname or "127.0.0.1", parts.port or (443 if secure else 80))
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except TimeoutError as exc:
        raise BackendTimeout(f"{backend_url}: connect timed out", before_request=True) from exc
    except OSError as exc:
        raise BackendUnavailable(f"{backend_url}: {exc.strerror or exc}", before_request=True) from exc
    if secure:
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address[0])
    return sock


def upgrade_request(method: str, target: str, headers: dict[str, str], upgrade: str) -> bytes:
    """The request head for the backend: rewritten headers plus the upgrade pair."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()
              if isinstance(value, str) and name.lower() not in HOP_BY_HOP]
    lines += ["Connection: Upgrade", f"Upgrade: {upgrade}", "", ""]
    return "\r\n".join(lines).encode("latin-1")


@dataclass
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    raw: bytes
    #: Bytes the backend sent after the head (early frames, or the start of a body).
    leftover: bytes = b""


def read_response_head(sock: socket.socket, backend_url: str) -> ResponseHead:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise BackendUnavailable(f"{backend_url}: response head larger than {MAX_HEAD} bytes")
        try:
            chunk = sock.recv(PIPE_CHUNK)
        except TimeoutError as exc:
            raise BackendTimeout(f"{backend_url}: no answer to the upgrade") from exc
        except OSError as exc:
            raise BackendUnavailable(f"{backend_url}: {exc}") from exc
        if not chunk:
            raise BackendUnavailable(f"{backend_url}: closed the connection before answering")
        buffer += chunk
    raw, leftover = buffer.split(b"\r\n\r\n", 1)
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise BackendUnavailable(f"{backend_url}: malformed status line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return ResponseHead(int(code), reason, headers, raw + b"\r\n\r\n", leftover)


def iter_plain_body(sock: socket.socket, head: ResponseHead, method: str) -> Iterator[bytes]:
    """The body of a refused upgrade, de-framed (gunicorn frames it again for the client)."""
    try:
        if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
            return
        headers = {name.lower(): value for name, value in head.headers}
        reader = _Reader(sock, head.leftover)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            yield from reader.chunked()
        elif headers.get("content-length", "").isdigit():
            yield from reader.exactly(int(headers["content-length"]))
        else:
            yield from reader.until_close()
    finally:
        sock.close()


class _Reader:
    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self.buffer = buffered

    def _fill(self) -> None:
        chunk = self.sock.recv(PIPE_CHUNK)
        if not chunk:
            raise BackendUnavailable("backend closed mid-body")
        self.buffer += chunk

    def exactly(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if not self.buffer:
                self._fill()
            piece, self.buffer = self.buffer[:n], self.buffer[n:]
            n -= len(piece)
            yield piece

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def chunked(self) -> Iterator[bytes]:
        while True:
            size = int(self.line().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.line():
                    pass  # trailers
                return
            yield from self.exactly(size)
            self.line()

    def until_close(self) -> Iterator[bytes]:
        if self.buffer:
            yield self.buffer
            self.buffer = b""
        while chunk := self.sock.recv(PIPE_CHUNK):
            yield chunk


@dataclass
class TunnelStats:
    client_to_backend: int = 0
    backend_to_client: int = 0
    started: float = field(default_factory=time.monotonic)
    ended_by: str = ""

    @property
    def duration(self) -> float:
        return time.monotonic() - self.started


class Tunnel:
    """Two pipes between the client and the backend socket, with idle and total limits."""

    def __init__(self, client: socket.socket, backend: socket.socket, idle_timeout: float,
                 max_duration: float | None) -> None:
        self.client = client
        self.backend = backend
        self.idle_timeout = idle_timeout
        self.max_duration = max_duration
        self.stats = TunnelStats()
        self.last_activity = time.monotonic()

    def run(self, early_backend_bytes: bytes = b"") -> TunnelStats:
        """Pipe until both directions are closed (or a limit ends it); never leaves a greenlet behind."""
        if early_backend_bytes:
            self.client.sendall(early_backend_bytes)
            self.stats.backend_to_client += len(early_backend_bytes)
        pipes = [gevent.spawn(self._pipe, self.client, self.backend, "client_to_backend"),
                 gevent.spawn(self._pipe, self.backend, self.client, "backend_to_client")]
        try:
            gevent.joinall(pipes, timeout=self.max_duration, count=1)
            if not any(p.dead for p in pipes):
                self.stats.ended_by = "max duration"
                self._cut()
            else:  # one side finished: the other gets a grace period to finish too
                gevent.joinall(pipes, timeout=HALF_CLOSE_GRACE)
                if not all(p.dead for p in pipes):
                    self.stats.ended_by = "half-closed"
                    self._cut()
            gevent.joinall(pipes)
        finally:
            gevent.killall(pipes)
            self._cut()
            self.backend.close()
        return self.stats

    def _pipe(self, source: socket.socket, sink: socket.socket, counter: str) -> None:
        source.settimeout(min(self.idle_timeout, 5.0))
        while True:
            try:
                data = source.recv(PIPE_CHUNK)
            except TimeoutError:
                if time.monotonic() - self.last_activity >= self.idle_timeout:
                    self.stats.ended_by = self.stats.ended_by or "idle timeout"
                    self._cut()
                    return
                continue
            except OSError:
                data = b""
            if not data:
                _shutdown(sink, socket.SHUT_WR)  # half-close: the other direction may go on
                return
            self.last_activity = time.monotonic()
            try:
                sink.sendall(data)
            except OSError:
                self._cut()
                return
            setattr(self.stats, counter, getattr(self.stats, counter) + len(data))

    def _cut(self) -> None:
        for sock in (self.client, self.backend):
            _shutdown(sock, socket.SHUT_RDWR)


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass  # already closed by the peer
