"""A real HTTP/1.1 backend for the functional tests, run as its own process.

``python tests/backend.py PORT [NAME]`` serves on 127.0.0.1:PORT until killed. Each
endpoint exercises one proxy behaviour; ``/echo`` reports what arrived, so tests can
assert on exactly what the proxy forwarded.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PATTERN = bytes(range(256)) * 256  # 64 KiB block; pattern_bytes(n) repeats it


def pattern_bytes(n: int) -> bytes:
    """The deterministic body of ``/bytes/<n>`` (tests compute the same to compare)."""
    full, rest = divmod(n, len(PATTERN))
    return PATTERN * full + PATTERN[:rest]


_connection_ids = itertools.count(1)
#: Tags of the ``/slow?tag=...`` requests being served: ``/under-way?tag=...`` tells a
#: test that its request has reached the backend, so it never sleeps to guess.
_slow_under_way: set[str] = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TestBackend/1.0"

    def setup(self) -> None:
        super().setup()
        # http.server writes head and body separately: without this, Nagle + delayed ACK
        # add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection_id = next(_connection_ids)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    # -------------------------------------------------------------- helpers

    def read_body(self) -> tuple[int, str]:
        """Read the whole request body (length or chunked) hashing as it goes."""
        digest = hashlib.sha256()
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 65536))
                    digest.update(chunk)
                    total += len(chunk)
                    remaining -= len(chunk)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                digest.update(chunk)
                total += len(chunk)
                remaining -= len(chunk)
        return total, digest.hexdigest()

    def send(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
             content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers or []:
            self.send_header(name, value)
        if status not in (204, 304) and not any(n.lower() == "content-length" for n, _ in headers or []):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    # ------------------------------------------------------------- dispatch

    def handle_any(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        name = "do_" + (parts[0] or "echo").replace("-", "_")
        getattr(self, name, self.do_echo)(parts[1:], query)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any

    def do_echo(self, args: list[str], query: dict[str, str]) -> None:
        length, digest = self.read_body()
        report = {
            "server": self.server.name,  # type: ignore[attr-defined]
            "method": self.command,
            "path": self.path,
            "headers": list(self.headers.items()),
            "body_length": length,
            "body_sha256": digest,
            "connection_id": self.connection_id,
        }
        body = json.dumps(report).encode()
        extra = []
        if query.get("close"):
            extra.append(("Connection", "close"))
            self.close_connection = True
        self.send(200, body, extra, "application/json")

    def do_bytes(self, args: list[str], query: dict[str, str]) -> None:
        self.read_body()
        n = int(args[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if query.get("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            while sent < n:
                block = PATTERN[: min(len(PATTERN), n - sent)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                sent += len(block)
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0
        while sent < n:
            block = PATTERN[: min(len(PATTERN), n - sent)]
            self.wfile.write(block)
            sent += len(block)

    def do_status(self, args: list[str], query: dict[str, str]) -> None:
        self.read_body()
        status = int(args[0])
        headers = [("Retry-After", query["retry_after"])] if "retry_after" in query else []
        self.send(status, b"" if status in (204, 304) else f"status {status}\n".encode(), headers)

    def do_redirect(self, args: list[str], query: dict[str, str]) -> None:
        self.read_body()
        self.send(302, b"moved\n", [("Location", "/elsewhere")])

    def do_cookie(self, args: list[str], query: dict[str, str]) -> None:
        self.read_body()
        self.send(200, b"cookies set\n", [("Set-Cookie", f"session={query.get('v', 'x')}; Path=/"),
                                           ("Set-Cookie", "theme=dark; Path=/")])

    def do_gzip(self, args: list[str], query: dict[str, str]) -> None:
        self.read_body()
        body = gzip.compress(b"compressed payload " * 100, mtime=0)
        self.send(200, body, [("Content-Encoding", "gzip")])

    def do_hop(self, args: list[str], query: dict[str, str]) -> None:
        self.read_body()
        self.send(200, b"hop\n", [("Connection", "X-Secret-Hop"), ("X-Secret-Hop", "1"),
                                  ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"),
                                  ("Trailer", "X-Checksum"), ("Upgrade", "h2c"),
                                  ("X-End-To-End", "kept")])

    def do_reset(self, args: list[str], query: dict[str, str]) -> None:
        """Promise a body, send part of it, then reset the connection (RST)."""
        self.read_body()
        sent = int(query.get("after", "65536"))
        self.send_response(200)
        self.send_header("Content-Length", str(sent * 10))
        self.end_headers()
        self.wfile.write(pattern_bytes(sent))
        self.wfile.flush()
        time.sleep(0.05)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def do_slow(self, args: list[str], query: dict[str, str]) -> None:
        self.read_body()
        tag = query.get("tag", "")
        _slow_under_way.add(tag)
        try:
            time.sleep(float(query.get("delay", "1")))
        finally:
            _slow_under_way.discard(tag)
        self.send(200, b"slow\n")

    def do_under_way(self, args: list[str], query: dict[str, str]) -> None:
        """Whether a ``/slow`` request with this ``tag`` is being served right now."""
        self.send(200, b"yes" if query.get("tag") in _slow_under_way else b"no")

    def do_drip(self, args: list[str], query: dict[str, str]) -> None:
        """A chunked body in timed pieces: a relay that buffers would deliver them late."""
        self.read_body()
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(int(query.get("count", "3"))):
            piece = f"piece {i} {time.time():.3f}\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(float(query.get("interval", "0.3")))
        self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def main() -> None:
    port = int(sys.argv[1])
    server = Server(("127.0.0.1", port), Handler)
    server.name = sys.argv[2] if len(sys.argv) > 2 else f"backend-{port}"  # type: ignore[attr-defined]
    server.serve_forever()


if __name__ == "__main__":
    main()
