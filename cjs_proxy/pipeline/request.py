"""What the client asked for, read from the WSGI environ: target, host, scheme, body, request id.

Pure functions over the environ (and one small record, ``ClientRequest``), so the
pipeline reads as a sequence of named steps and each rule is tested on its own.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cjs_proxy.exceptions import BadRequest, MethodNotAllowed, PayloadTooLarge, UnsupportedTransferCoding
from cjs_proxy.pipeline.headers import is_trusted, new_request_id, upstream_request_headers
from cjs_proxy.pipeline.request_body import RequestBody

Headers = list[tuple[str, str]]
#: What a forwarded ``X-Request-ID`` may look like (it is logged unquoted).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class ClientRequest:
    """One client request as the backend will be sent it."""

    environ: dict[str, Any]
    method: str
    #: The target as the client wrote it, in origin form.
    target: str
    #: The ``Host`` sent on (the client's, else the routed host).
    host_header: str
    #: The host routed on (lowercased, no port, no trailing dot).
    host: str
    client_ip: str
    request_id: str
    #: True when the peer is in ``server.trustedProxies``: its forwarding headers are kept.
    trusted_peer: bool
    body: RequestBody | None
    #: The ``Via`` to forward (the client's plus this hop); None leaves the client's as it is.
    via: str | None = None

    def upstream_headers(self) -> Headers:
        """The headers the backend is sent (hop-by-hop removed, ``X-Forwarded-*`` added)."""
        environ = self.environ
        return upstream_request_headers(
            environ, host=self.host_header, routed_host=self.host, client_ip=self.client_ip,
            proto=request_scheme(environ), port=environ.get("SERVER_PORT", ""), request_id=self.request_id,
            trusted_peer=self.trusted_peer, via=self.via)


def refuse_connect(environ: dict[str, Any]) -> None:
    """``CONNECT`` is a forward proxy's method: this one only ever talks to routed backends."""
    if environ["REQUEST_METHOD"] == "CONNECT":
        raise MethodNotAllowed("CONNECT: this is a reverse proxy, not a tunnel")


def request_scheme(environ: dict[str, Any]) -> str:
    """``https`` when the client connection is TLS (per listener, not gunicorn's global flag).

    The worker hands gunicorn the socket wrapped (``workers.client_connection``); the
    wrapped socket is what says whether it is TLS.
    """
    sock = environ.get("gunicorn.socket")
    sock = getattr(sock, "wrapped", sock)
    return "https" if isinstance(sock, ssl.SSLSocket) else "http"


def target_and_host(environ: dict[str, Any]) -> tuple[str, str | None]:
    """The origin-form target to send upstream, exactly as written, and the Host to route on.

    An absolute-form target's authority replaces ``Host`` (RFC 9112 3.2.2), and the
    backend is sent its path and query; a scheme other than http/https is refused.
    """
    raw_uri = environ.get("RAW_URI") or "/"
    if raw_uri[0] == "/" or raw_uri == "*":
        return raw_uri, environ.get("HTTP_HOST")
    scheme, sep, _ = raw_uri.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadRequest(f"request target {raw_uri[:100]!r}: only origin form and http(s) absolute form")
    parts = urlsplit(raw_uri)
    if not parts.netloc or "@" in parts.netloc:
        raise BadRequest(f"request target {raw_uri[:100]!r}: no usable authority")
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), parts.netloc


def trusted_peer(environ: dict[str, Any], trusted: tuple) -> bool:
    """The connection comes from one of ``server.trustedProxies``."""
    return bool(trusted) and is_trusted(environ.get("REMOTE_ADDR", ""), trusted)


def request_id(environ: dict[str, Any], peer_trusted: bool) -> str:
    """A client's ``X-Request-ID`` is kept only from a trusted proxy (``trusted_peer``); otherwise a new one."""
    given = environ.get("HTTP_X_REQUEST_ID")
    if given and peer_trusted and REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def request_body(environ: dict[str, Any], max_body: int | None) -> RequestBody | None:
    """The body to stream to the backend, refused early when its declared size is over the limit."""
    coding = environ.get("HTTP_TRANSFER_ENCODING")
    if coding is not None:
        if [t.strip() for t in coding.lower().split(",")] != ["chunked"]:
            raise UnsupportedTransferCoding(f"request Transfer-Encoding {coding!r}")
        return RequestBody(environ["wsgi.input"], None, max_body)
    length = content_length(environ)
    if max_body is not None and length > max_body:
        raise PayloadTooLarge(f"declared body of {length} bytes exceeds {max_body}")
    return RequestBody(environ["wsgi.input"], length) if length else None


def content_length(environ: dict[str, Any]) -> int:
    value = environ.get("CONTENT_LENGTH")
    if not value:
        return 0
    if not value.isdigit():
        raise BadRequest(f"invalid Content-Length {value!r}")
    return int(value)
