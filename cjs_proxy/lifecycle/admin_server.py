"""The admin listener: ``/metrics``, ``/healthz`` and ``/readyz``, served by the gunicorn master.

It runs in the master, in threads (the master is not monkeypatched by gevent), for
three reasons: a scrape must see every worker's values summed, and the master is the
one process that outlives them all; a worker busy with traffic (or being recycled)
never delays a scrape or a health check; and the admin ports are separate sockets
that no worker ever accepts on, so a client of the public ports cannot reach these
pages by any Host header or path (a request for ``/metrics`` there is routed like any
other).

``/readyz`` asks Redis itself with a bare RESP ``PING`` on a short-lived socket:
importing redis-py into the master would defeat gevent's patching of the workers,
which inherit the master's modules.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("cjs_proxy.lifecycle.admin_server")

TEXT = "text/plain; charset=utf-8"


class AdminBindError(Exception):
    """An admin address cannot be listened on (in use, not local...)."""


# ------------------------------------------------------------------- readiness


def _resp(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisProbe:
    """``PING`` (after ``AUTH`` when the URL has a password) on a fresh connection: None if PONG, else why."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        parts = urlsplit(url)
        self.scheme = parts.scheme
        query = parse_qs(parts.query)
        password = parts.password or next(iter(query.get("password", [])), None)
        username = parts.username or next(iter(query.get("username", [])), None)
        self.auth = () if not password else (
            (unquote(username), unquote(password)) if username else (unquote(password),))
        self.address: Any = parts.path if self.scheme == "unix" else (parts.hostname or "127.0.0.1",
                                                                         parts.port or 6379)

    def __call__(self) -> str | None:
        try:
            with self._connect() as sock:
                for command in ((("AUTH", *self.auth),) if self.auth else ()) + (("PING",),):
                    sock.sendall(_resp(*command))
                    reply = sock.recv(512).split(b"\r\n", 1)[0]
                    if reply[:1] == b"-" or not reply:
                        return f"redis answered {reply.decode(errors='replace') or 'nothing'!r} to {command[0]}"
        except OSError as exc:
            return f"redis unreachable: {exc}"
        return None

    def _connect(self) -> socket.socket:
        if self.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
            return sock
        sock = socket.create_connection(self.address, timeout=self.timeout)
        if self.scheme == "rediss":
            return ssl.create_default_context().wrap_socket(sock, server_hostname=self.address[0])
        return sock


class Readiness:
    """Ready while Redis answers, or for ``stale_ttl`` seconds after it last did.

    The workers serve a host's last good route for ``server.staleRouteTTL`` seconds
    after Redis goes away, so the node is still useful that long; after that, only
    hosts it cannot route are left and a load balancer should send traffic elsewhere.
    """

    def __init__(self, probe: Callable[[], str | None], stale_ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.probe = probe
        self.stale_ttl = stale_ttl
        self.clock = clock
        self.last_ok: float | None = None
        self.lock = threading.Lock()  # scrapes may come in parallel threads

    def check(self) -> tuple[bool, str]:
        """(ready, the reason, for the response body)."""
        with self.lock:
            problem = self.probe()
            now = self.clock()
            if problem is None:
                self.last_ok = now
                return True, "ready: redis answers"
            if self.last_ok is not None and now - self.last_ok <= self.stale_ttl:
                return True, (f"ready (stale): {problem}; serving last good routes for up to "
                              f"{self.stale_ttl - (now - self.last_ok):.0f} s more (server.staleRouteTTL)")
            return False, f"not ready: {problem}"


# ------------------------------------------------------------------------ HTTP


class AdminPages:
    """What the three pages answer, apart from HTTP: easy to test without a socket."""

    def __init__(self, scrape: Callable[[], tuple[bytes, str]], readiness: Readiness,
                 alive: Callable[[], bool] = lambda: True) -> None:
        self.scrape = scrape
        self.readiness = readiness
        self.alive = alive

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for ``GET path``."""
        path = path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = self.scrape()
            return 200, content_type, body
        if path == "/healthz":
            return (200, TEXT, b"ok\n") if self.alive() else (503, TEXT, b"no worker running\n")
        if path == "/readyz":
            ready, reason = self.readiness.check()
            return (200 if ready else 503), TEXT, reason.encode() + b"\n"
        return 404, TEXT, b"not found: /metrics, /healthz and /readyz are served here\n"


class _Handler(BaseHTTPRequestHandler):
    server_version = "cjs-proxy-admin"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: nothing to keep, nothing to leak
    pages: AdminPages

    def do_GET(self) -> None:
        try:
            status, content_type, body = self.pages.answer(self.path)
        except Exception:  # a broken scrape must not kill the listener thread; logged with its traceback
            log.exception("admin page %s failed", self.path)
            status, content_type, body = 500, TEXT, b"internal error (see the error log)\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin %s: " + format, self.client_address[0], *args)


class AdminServer:
    """One threaded HTTP server per ``admin.bind`` address, each in a daemon thread."""

    def __init__(self, addresses: list[tuple[str, int]], pages: AdminPages) -> None:
        handler = type("AdminHandler", (_Handler,), {"pages": pages})
        self.servers: list[ThreadingHTTPServer] = []
        self.serving = False
        try:
            for address, port in addresses:
                self.servers.append(_listen(address, port, handler))
        except AdminBindError:
            self.close()
            raise

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.server_address[:2] for s in self.servers]  # type: ignore[misc]

    def start(self) -> None:
        self.serving = True
        for server in self.servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                             name=f"cjs-proxy-admin-{server.server_address[1]}", daemon=True).start()

    def close_in_child(self) -> None:
        """In a forked worker: drop the inherited listening sockets (the master keeps serving)."""
        for server in self.servers:
            server.socket.close()
        self.servers = []

    def close(self) -> None:
        for server in self.servers:
            if self.serving:  # shutdown() waits for serve_forever, forever if it never ran
                server.shutdown()
            server.server_close()
        self.servers = []
        self.serving = False


def _listen(address: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server_class = type("AdminHTTPServer", (ThreadingHTTPServer,), {
        "address_family": socket.AF_INET6 if ":" in address else socket.AF_INET,
        "daemon_threads": True,
        "allow_reuse_address": True,
    })
    try:
        return server_class((address, port), handler)
    except OSError as exc:
        raise AdminBindError(f"admin.bind {address}:{port}: {exc.strerror or exc}") from None
