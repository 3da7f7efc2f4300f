"""A raw-socket backend that answers with exact scripted bytes, for socket-level tests.

``tests/backend.py`` is a real HTTP server: it can only send what ``http.server`` is
willing to produce. The proxy's defences against misbehaving backends (interim
responses, ambiguous framing, header injection, truncated bodies...) need a backend
that writes *exactly* the bytes a test chooses, and that records *exactly* the bytes
the proxy sent, as urllib3's ``test_socketlevel.py`` does against urllib3.

It runs in the test process (threads, not a subprocess), bound to 127.0.0.1 on a free
port, and is always stopped by its fixture. Each accepted connection gets an id
(1, 2, ...), so a test can tell whether the proxy reused a pooled backend connection
or opened a new one.

Answers are chosen by the request target: first the whole target, then its path
(without the query). An answer is either

- ``bytes``: written as is; the connection then waits for the next request;
- a callable taking the ``Received`` request and returning ``bytes``: the same,
  with bytes computed from the request;
- ``OnSocket(act)``: ``act(sock, received)`` does what it likes with the socket
  (send a head then close, send part of a body then close, ...); the connection is
  closed after it returns unless ``keep_open``.

Unscripted targets get ``ordinary_response``: a ``200`` with ``Content-Length``, a
body naming the target and the connection id, and ``Set-Cookie: user=<path>``, so a
response that reaches the wrong client is recognisable byte for byte.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.harness import WAIT, wait_for

#: Seconds any backend socket waits for the proxy before giving up on it.
SOCKET_TIMEOUT = 30.0
#: Largest request head the backend accepts (the proxy never sends more in tests).
MAX_HEAD = 256 * 1024


@dataclass
class Received:
    """One request as the backend got it: the raw head bytes and the connection it came on."""

    connection: int
    head: bytes
    body: bytes = b""

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def method(self) -> str:
        return self.request_line.split(b" ", 1)[0].decode("latin-1")

    @property
    def target(self) -> str:
        parts = self.request_line.split(b" ")
        return parts[1].decode("latin-1") if len(parts) > 1 else ""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header line in order, names as sent (no folding or decoding)."""
        result = []
        for line in self.head.split(b"\r\n")[1:]:
            if not line:
                continue
            name, _, value = line.partition(b":")
            result.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        return result

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass(frozen=True)
class OnSocket:
    """An answer that drives the socket itself; the connection is closed afterwards
    (with an RST instead of a FIN if ``reset``) unless ``keep_open``."""

    act: Callable[[socket.socket, Received], None]
    keep_open: bool = False
    reset: bool = False


Answer = bytes | Callable[[Received], bytes] | OnSocket


def send_then_close(data: bytes) -> OnSocket:
    """Send ``data`` (a head, or a head and part of a body) and close the connection with a FIN."""
    return OnSocket(lambda sock, _received: sock.sendall(data))


def ordinary_body(received: Received) -> bytes:
    """The body of the default answer: names the target and the connection."""
    return f"path={received.target} conn={received.connection}\n".encode("latin-1")


def ordinary_response(received: Received) -> bytes:
    """A plain keep-alive ``200`` identifying the request (see the module docstring)."""
    body = ordinary_body(received)
    return (b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/plain\r\n"
            b"Set-Cookie: user=" + received.path.encode("latin-1") + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"\r\n" + body)


@dataclass
class Connection:
    """One accepted connection: its id and every byte the proxy sent on it."""

    id: int
    sock: socket.socket
    raw: bytearray = field(default_factory=bytearray)
    closed: bool = False


class ScriptedBackend:
    """The backend itself; ``script`` maps a target or path to an ``Answer``."""

    def __init__(self, script: dict[str, Answer] | None = None) -> None:
        self.script: dict[str, Answer] = dict(script or {})
        self.received: list[Received] = []
        self.connections: dict[int, Connection] = {}
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)  # so the accept loop sees stop() promptly
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"scripted-{self.port}", daemon=True)
        self._acceptor.start()

    # ----------------------------------------------------------------- queries

    def requests_for(self, path: str) -> list[Received]:
        """Requests received for ``path`` (target or path without the query)."""
        with self._lock:
            return [r for r in self.received if path in (r.target, r.path)]

    def wait_for_request(self, path: str, timeout: float = WAIT) -> Received:
        """The first request for ``path``, waiting for it (the proxy may still be sending)."""
        wait_for(lambda: bool(self.requests_for(path)), f"backend request for {path}", timeout, interval=0.02)
        return self.requests_for(path)[0]

    def bytes_on(self, connection: int) -> bytes:
        """Every byte the proxy sent on a backend connection so far."""
        with self._lock:
            return bytes(self.connections[connection].raw)

    def connection_closed(self, connection: int) -> bool:
        with self._lock:
            return self.connections[connection].closed

    def connection_ids(self) -> list[int]:
        """The ids of every connection the proxy has opened so far."""
        with self._lock:
            return sorted(self.connections)

    # --------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Close the listener and every connection; join the threads (idempotent)."""
        self._stopping.set()
        self.listener.close()
        self._acceptor.join(10)  # first, so no connection is accepted after the snapshot below
        with self._lock:
            conns = list(self.connections.values())
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes its thread out of recv()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(10)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed by stop()
            sock.settimeout(SOCKET_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                conn = Connection(next(self._ids), sock)
                self.connections[conn.id] = conn
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name=f"scripted-{self.port}-{conn.id}")
            self._threads.append(thread)
            thread.start()

    # ------------------------------------------------------------- connection

    def _serve(self, conn: Connection) -> None:
        buffer = b""
        try:
            while not self._stopping.is_set():
                while b"\r\n\r\n" not in buffer:
                    if len(buffer) > MAX_HEAD:
                        self.errors.append(f"connection {conn.id}: head too large")
                        return
                    chunk = self._recv(conn)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                received = Received(conn.id, head + b"\r\n\r\n")
                body, buffer = self._read_body(conn, received, buffer)
                received.body = body
                with self._lock:
                    self.received.append(received)
                answer = self._answer_for(received)
                if isinstance(answer, OnSocket):
                    answer.act(conn.sock, received)
                    if not answer.keep_open:
                        if answer.reset:
                            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    continue
                conn.sock.sendall(answer(received) if callable(answer) else answer)
        except OSError as exc:
            if not self._stopping.is_set():
                self.errors.append(f"connection {conn.id}: {exc!r}")
        finally:
            with self._lock:
                conn.closed = True
            conn.sock.close()

    def _recv(self, conn: Connection) -> bytes:
        chunk = conn.sock.recv(65536)
        with self._lock:
            conn.raw += chunk
        return chunk

    def _read_body(self, conn: Connection, received: Received, buffer: bytes) -> tuple[bytes, bytes]:
        """The request body by Content-Length or chunked framing; returns (body, what follows)."""
        if any("chunked" in v.lower() for v in received.header("Transfer-Encoding")):
            body = b""
            while True:
                while b"\r\n" not in buffer:
                    buffer += self._recv_or_fail(conn)
                size_line, _, buffer = buffer.partition(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        while b"\r\n" not in buffer:
                            buffer += self._recv_or_fail(conn)
                        line, _, buffer = buffer.partition(b"\r\n")
                        if not line:
                            return body, buffer
                while len(buffer) < size + 2:
                    buffer += self._recv_or_fail(conn)
                body += buffer[:size]
                buffer = buffer[size + 2:]
        lengths = received.header("Content-Length")
        length = int(lengths[0]) if lengths and lengths[0].isdigit() else 0
        while len(buffer) < length:
            buffer += self._recv_or_fail(conn)
        return buffer[:length], buffer[length:]

    def _recv_or_fail(self, conn: Connection) -> bytes:
        chunk = self._recv(conn)
        if not chunk:
            raise ConnectionError("proxy closed the connection mid-body")
        return chunk

    def _answer_for(self, received: Received) -> Answer:
        for key in (received.target, received.path):
            if key in self.script:
                return self.script[key]
        return ordinary_response
