"""WebSocket tunnelling: relay the upgrade to the backend, then pipe raw bytes both ways.

The upgrade request is routed, limited and rewritten like any other request, then
sent on a fresh backend connection by ``open_tunnel`` (``Upstream.open_upgrade``: the
same strict HTTP/1.1 layer as every other request). A ``101 websocket`` answer is
relayed verbatim to the client socket taken from gunicorn (``gunicorn.socket``) by
``run_tunnel``, and two greenlets copy bytes in each direction until both sides are
done; frames are never parsed, so any subprotocol and binary frames pass unchanged.
Any other answer is relayed by the pipeline as a normal HTTP response.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent

from cjs_proxy.pipeline.sockets import Pacer

if TYPE_CHECKING:
    from cjs_proxy.pipeline.upstream import Upstream, UpstreamResponse

log = logging.getLogger("cjs_proxy.pipeline.websocket")

#: Bytes copied per step in each direction.
PIPE_CHUNK = 64 * 1024
#: Seconds a tunnel stays half-open after one side finished, for the other to finish too
#: (nginx ends an upgraded connection when either side does; this lets in-flight bytes
#: and a closing handshake through first).
HALF_CLOSE_GRACE = 5.0
#: The one protocol a tunnel is opened for.
WEBSOCKET = "websocket"


def is_upgrade(environ: dict[str, Any]) -> bool:
    """A WebSocket upgrade: ``Upgrade: websocket`` as the single token, with ``Connection: upgrade``.

    Any other upgrade (``h2c``, ``websocket, h2c``...) is proxied as an ordinary request,
    its ``Upgrade`` dropped as hop-by-hop: a tunnel that is not WebSocket would carry
    bytes past routing, limits and logging.
    """
    if environ.get("HTTP_UPGRADE", "").strip().lower() != WEBSOCKET:
        return False
    return "upgrade" in (t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(","))


@dataclass
class TunnelStats:
    client_to_backend: int = 0
    backend_to_client: int = 0
    started: float = field(default_factory=time.monotonic)
    ended_by: str = ""

    @property
    def duration(self) -> float:
        return time.monotonic() - self.started

    def log_field(self) -> str:
        """``ws=<bytes in>/<bytes out> <seconds>s[ <why it ended>]``, appended to the access-log line."""
        ended_by = f" {self.ended_by}" if self.ended_by else ""
        return f"ws={self.client_to_backend}/{self.backend_to_client} {self.duration:.3f}s{ended_by}"


@dataclass(frozen=True)
class TunnelOutcome:
    """What the access log says of a finished tunnel."""

    bytes_sent: int
    log_field: str


#: A client gone before the backend's ``101`` reached it: nothing piped.
ABORTED = TunnelOutcome(0, "ws=0/0 aborted")


def open_tunnel(upstream: Upstream, backend_url: str, method: str, target: str,
                headers: list[tuple[str, str]]) -> UpstreamResponse:
    """Send the upgrade request (its headers plus ``Connection``/``Upgrade``) on a fresh connection."""
    headers = [*headers, ("Connection", "Upgrade"), ("Upgrade", WEBSOCKET)]
    return upstream.open_upgrade(backend_url, method, target, headers, WEBSOCKET)


def run_tunnel(switching: UpstreamResponse, client: socket.socket, idle_timeout: float,
               max_duration: float | None, host: str) -> TunnelOutcome:
    """After a ``101``: relay the backend's handshake verbatim, then pipe until both sides are done.

    The tunnel's slot (``websocket.maxPerBackend``) is given back once its backend socket is closed.
    """
    backend, early_bytes = switching.detach()
    try:
        client.sendall(switching.head.raw)
        stats = Tunnel(client, backend, idle_timeout, max_duration).run(early_bytes)
    except OSError as exc:
        log.info("%s: websocket client went away during the handshake: %s", host, exc)
        backend.close()
        return ABORTED
    finally:
        switching.release_slot()
    return TunnelOutcome(stats.backend_to_client, stats.log_field())


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
        pacer = Pacer()
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
            pacer.moved(len(data))

    def _cut(self) -> None:
        for sock in (self.client, self.backend):
            _shutdown(sock, socket.SHUT_RDWR)


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass  # already closed by the peer
