"""The worker's response writer: gunicorn's, sending a response's head with its first body bytes;
and the part of every request's WSGI environ that never changes, built once.

gunicorn writes the head of a response with one ``send`` and each body piece with another,
so a small answer costs two system calls here, two TCP segments and two wake-ups of the
client. ``HeadWithBody`` keeps the head back until the first body piece of the same
``write`` and sends both at once. The head is never held past the ``write`` or ``close``
that produced it: gunicorn only builds the head when it has a first body piece (or the
response ends), so a streamed answer's head leaves exactly as early as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gunicorn.http import wsgi as gunicorn_wsgi

#: Largest first body piece joined to the head (joining copies it once).
JOIN_LIMIT = 16 * 1024


class HeadWithBody(gunicorn_wsgi.Response):
    """gunicorn's ``Response``; the worker makes it the one ``gunicorn.http.wsgi.create`` builds."""

    _head = b""
    # Set by gunicorn's Response (untyped): declared so the uses below are checked.
    headers_sent: bool
    chunked: bool

    def send_headers(self) -> None:
        """Build the head as gunicorn does, and keep it for the first body piece."""
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._head = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _emit_body(self, data: bytes) -> None:
        head, self._head = self._head, b""
        if head and len(data) <= JOIN_LIMIT:
            if self.chunked:
                data = b"%X\r\n%s\r\n" % (len(data), data)
            self.sock.sendall(head + data)
            return
        if head:
            self.sock.sendall(head)
        super()._emit_body(data)

    def write(self, arg: bytes) -> None:
        """gunicorn's ``write``; a head it built but sent no body with (a HEAD request, an
        empty piece, a length already reached) leaves before this returns."""
        try:
            super().write(arg)
        finally:
            self._send_head()

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        self._send_head()
        super().close()

    def can_sendfile(self) -> bool:
        """No ``sendfile``: it would write the file before the head. The proxy never hands
        gunicorn a file, so nothing is lost."""
        return False

    def _send_head(self) -> None:
        head, self._head = self._head, b""
        if head:
            self.sock.sendall(head)


class ErrorStream:
    """``wsgi.errors``: gunicorn's error log, found when written to (rarely; the proxy logs
    through ``logging``) instead of for every request as gunicorn's wrapper is."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def write(self, data: str) -> None:
        gunicorn_wsgi.WSGIErrorsWrapper(self.cfg).write(data)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Every write is flushed already."""


def install(cfg: Any) -> None:
    """Make ``HeadWithBody`` the response class of every request this worker serves, and
    start every request's environ from one built here.

    gunicorn's async worker calls ``gunicorn.http.wsgi.create`` without a response class,
    which then builds the module's ``Response``, looked up at each call; ``create`` starts
    each environ from the module's ``base_environ``, which builds an error-log wrapper
    (a logger lookup and a walk of its handlers) and reads the configuration for keys
    that are the same for every request of the worker.
    """
    gunicorn_wsgi.Response = HeadWithBody
    constant = {**gunicorn_wsgi.base_environ(cfg), "wsgi.errors": ErrorStream(cfg)}
    gunicorn_wsgi.base_environ = lambda _cfg: constant.copy()

