"""The access log: nginx's combined format plus vhost id, upstream address and timings.

One line per request (and per tunnel), written with a single ``write`` on an
``O_APPEND`` descriptor so lines from several workers never interleave. ``reopen()``
runs on SIGUSR1, after logrotate moved the file.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass


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


class AccessLog:
    """Appends formatted lines to ``server.accessLog`` (``-`` for stdout, None for off)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.fd: int | None = None
        self._stamp_second = -1
        self._stamp = ""
        self.reopen()

    def reopen(self) -> None:
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
            self._stamp, self._stamp_second = local_time(second), second
        os.write(self.fd, format_line(entry, self._stamp).encode("utf-8", "backslashreplace"))

    def close(self) -> None:
        if self.fd is not None and self.path != "-":
            os.close(self.fd)
        self.fd = None
