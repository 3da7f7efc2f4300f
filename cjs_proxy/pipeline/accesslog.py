"""The access log: nginx's combined format plus vhost id, upstream address and timings, or JSON.

``server.accessLogFormat: json`` writes the same fields (and the limiter's decision)
as one JSON object per line, for log pipelines that would otherwise parse the
combined format with a regular expression. One line per request (and per tunnel).

The lines of one turn of the worker's event loop are written together, with a single
``write`` on an ``O_APPEND`` descriptor, at the end of that turn: a system call per turn
instead of per request, and lines from several workers never interleave (to a pipe, a
write holds at most ``PIPE_BUF`` bytes, which the kernel keeps whole). A line waits only
for the other greenlets of its turn, never for a timer or for later traffic. ``reopen()``
runs on SIGUSR1, after logrotate moved the file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from select import PIPE_BUF

import gevent


@dataclass
class AccessEntry:
    remote_addr: str
    method: str
    uri: str
    protocol: str
    status: int
    bytes_sent: int
    referer: str
    user_agent: str
    vhost: str = "-"
    upstream: str = "-"
    request_time: float = 0.0
    upstream_time: float | None = None
    request_id: str = "-"
    started: float = 0.0
    #: Appended as is (a tunnel's ``ws=<bytes in>/<bytes out> <seconds>s``).
    extra: str = ""
    #: The rate limiter's decision (``allowed``, ``limited``, ``shadow``, ``fallback``, ``local-*``; JSON only).
    limit: str = "-"


def _quote(value: str) -> str:
    """nginx escapes ``"``, backslash and control bytes as ``\\xHH`` inside quoted fields."""
    if value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02X}" for c in value)


def local_time(started: float) -> str:
    """nginx's ``$time_local``: ``10/Oct/2000:13:55:36 -0700``."""
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(started))


def format_line(e: AccessEntry, stamp: str) -> str:
    """One log line; ``stamp`` is ``local_time(e.started)``, cached by the caller."""
    upstream_time = "-" if e.upstream_time is None else f"{e.upstream_time:.3f}"
    return (
        f'{e.remote_addr} - - [{stamp}] '
        f'"{_quote(e.method)} {_quote(e.uri)} {e.protocol}" {e.status} {e.bytes_sent} '
        f'"{_quote(e.referer or "-")}" "{_quote(e.user_agent or "-")}" '
        f'"{_quote(e.vhost)}" {e.upstream} {e.request_time:.3f} {upstream_time} {e.request_id}'
        f'{" " + e.extra if e.extra else ""}\n'
    )


def iso_time(started: float) -> str:
    """ISO 8601 local time to the second with its UTC offset: ``2000-10-10T13:55:36-07:00``."""
    zone = time.strftime("%z", time.localtime(started))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)) + f"{zone[:3]}:{zone[3:]}"


def format_json(e: AccessEntry, stamp: str) -> str:
    """One JSON object per line (``stamp`` is ``iso_time(e.started)``); milliseconds are added here.

    ``ensure_ascii`` escapes every control and non-ASCII character, so a value from a
    client or from Redis can never end the line early.
    """
    millis = int((e.started % 1) * 1000)
    record = {
        "time": f"{stamp[:19]}.{millis:03d}{stamp[19:]}", "remote_addr": e.remote_addr, "method": e.method,
        "uri": e.uri, "protocol": e.protocol, "status": e.status, "bytes_sent": e.bytes_sent,
        "referer": e.referer or "-", "user_agent": e.user_agent or "-", "vhost": e.vhost,
        "upstream": e.upstream, "request_time": round(e.request_time, 6),
        "upstream_time": None if e.upstream_time is None else round(e.upstream_time, 6),
        "request_id": e.request_id, "limit": e.limit, "extra": e.extra,
    }
    return json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n"


#: Line formatter and per-second time stamp of each ``server.accessLogFormat``.
FORMATS: dict[str, tuple[Callable[[AccessEntry, str], str], Callable[[float], str]]] = {
    "combined": (format_line, local_time),
    "json": (format_json, iso_time),
}


class AccessLog:
    """Appends formatted lines to ``server.accessLog`` (``-`` for stdout, None for off)."""

    def __init__(self, path: str | None, fmt: str = "combined",
                 defer: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.path = path
        self.format, self.stamp = FORMATS[fmt]
        self.fd: int | None = None
        self._stamp_second = -1
        self._stamp = ""
        #: Runs a function once the loop turn's ready greenlets have had their go.
        self._defer = defer or (lambda function: gevent.get_hub().loop.run_callback(function))
        self._lines: list[str] = []
        self.reopen()

    def reopen(self) -> None:
        self.flush()
        if self.path is None:
            return
        if self.path == "-":
            self.fd = sys.stdout.fileno()
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        old, self.fd = self.fd, fd
        if old is not None:
            os.close(old)

    def write(self, entry: AccessEntry) -> None:
        if self.fd is None:
            return
        second = int(entry.started)
        if second != self._stamp_second:  # strftime once a second, not once a request
            self._stamp, self._stamp_second = self.stamp(second), second
        if not self._lines:
            self._defer(self.flush)
        self._lines.append(self.format(entry, self._stamp))

    def flush(self) -> None:
        """Write the lines kept so far: one ``write`` each ``select.PIPE_BUF`` bytes at most
        for stdout (maybe a pipe), one for a file."""
        lines, self._lines = self._lines, []
        if not lines or self.fd is None:
            return
        limit = PIPE_BUF if self.path == "-" else None
        for chunk in _chunks(lines, limit):
            os.write(self.fd, chunk)

    def close(self) -> None:
        self.flush()
        if self.fd is not None and self.path != "-":
            os.close(self.fd)
        self.fd = None


def _chunks(lines: list[str], limit: int | None) -> list[bytes]:
    """The lines encoded, joined into writes of at most ``limit`` bytes (a longer line alone)."""
    encoded = [line.encode("utf-8", "backslashreplace") for line in lines]
    if limit is None:
        return [b"".join(encoded)]
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in encoded:
        if current and size + len(line) > limit:
            chunks.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    chunks.append(b"".join(current))
    return chunks
