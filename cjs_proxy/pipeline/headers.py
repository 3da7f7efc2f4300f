"""Header rewriting between client and backend: hop-by-hop removal and X-Forwarded-*.

Pure functions over the WSGI environ and header lists, so every rule is unit-tested.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

#: Hop-by-hop headers (RFC 9110 section 7.6.1) plus the framing headers that the
#: proxy recomputes on each side; ``Connection`` may name more.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-connection", "proxy-authenticate", "proxy-authorization",
})
#: Request headers set by the proxy itself; a client's copy is replaced, not kept.
PROXY_SET = frozenset({"x-real-ip", "x-forwarded-proto", "x-forwarded-port", "x-request-id"})
#: Set by the proxy too, but from the client's value (appended to): never nominated away.
APPENDED = frozenset({"via"})
#: Client headers that say where the request came from; kept only from a trusted proxy.
FORWARDING_CLAIMS = frozenset({"x-forwarded-host", "forwarded"})
#: Headers a client's ``Connection`` can never remove: the request's own identity and
#: framing, and everything the proxy sets.
NOT_NOMINATABLE = frozenset({"host", "content-length", "content-type", "x-forwarded-for"}) | PROXY_SET \
    | FORWARDING_CLAIMS | APPENDED
#: Backend response headers the proxy replaces with its own, as nginx does.
RESPONSE_REPLACED = frozenset({"server", "date"})
#: What gunicorn accepts in a response header (RFC 9110 token and field-value).
_VALID_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-zA-Z-]+")
_VALID_VALUE = re.compile(r"[ \t\x21-\x7e\x80-\xff]*")
log = logging.getLogger("cjs_proxy.pipeline.headers")


def escape_header_value(value: str) -> str:
    """``value`` made safe for a response header the proxy writes from data it does not control.

    Debug headers carry what Redis holds (a frontend identifier) and error details;
    gunicorn refuses a response whose header holds a CR, LF or other control character
    (the client would get a 500), so anything but printable ASCII becomes ``\\xHH``
    (``\\uHHHH`` above U+00FF), as control characters are in the access log.
    """
    if value.isascii() and value.isprintable():
        return value
    return "".join(c if c.isascii() and c.isprintable() else
                   (f"\\x{ord(c):02X}" if ord(c) < 0x100 else f"\\u{ord(c):04X}") for c in value)


def _connection_tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in value.split(",")} if value else set()


def _header_name(environ_key: str) -> str:
    return environ_key[5:].replace("_", "-").title()


def is_hop_by_hop(name: str, connection_tokens: set[str]) -> bool:
    lower = name.lower()
    return lower in HOP_BY_HOP or lower in connection_tokens or lower.startswith("proxy-")


def parse_networks(cidrs: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_trusted(address: str, trusted: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def client_address(environ: Mapping[str, Any], trusted: tuple) -> str:
    """The client's IP: the TCP peer, or behind trusted proxies the rightmost untrusted hop."""
    peer = environ.get("REMOTE_ADDR", "") or "-"
    if not trusted or not is_trusted(peer, trusted):
        return peer
    forwarded = [a.strip() for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
    last_hop = peer
    for address in reversed(forwarded):
        if not is_trusted(address, trusted):
            # Not an address (forged or "unknown"): stop at the last trusted hop, as nginx does.
            return address if _is_ip(address) else last_hop
        last_hop = address
    return forwarded[0] if forwarded else peer


def new_request_id() -> str:
    return os.urandom(16).hex()


def upstream_request_headers(environ: Mapping[str, Any], *, host: str, routed_host: str, client_ip: str,
                             proto: str, port: str, request_id: str, trusted_peer: bool,
                             via: str | None = None) -> list[tuple[str, str]]:
    """Headers to send to the backend: the client's, less hop-by-hop, plus X-Forwarded-*.

    ``host`` is the ``Host`` to send (the client's, or an absolute-form target's
    authority); ``X-Forwarded-For`` gets the TCP peer appended; ``X-Forwarded-Host`` is
    the host the proxy routed on. A client's ``X-Forwarded-Host`` and ``Forwarded`` are
    kept only from a trusted proxy (``trusted_peer``): apps build absolute URLs from them.
    ``via``, when given, replaces the client's ``Via`` (it already holds it, this hop appended).
    """
    tokens = _connection_tokens(environ.get("HTTP_CONNECTION")) - NOT_NOMINATABLE
    headers: list[tuple[str, str]] = [("Host", host)]
    claims: dict[str, str] = {}
    for key, value in environ.items():
        if not key.startswith("HTTP_") or key == "HTTP_HOST":
            continue
        name = _header_name(key)
        lower = name.lower()
        if lower in FORWARDING_CLAIMS:
            if trusted_peer:
                claims[lower] = value
                headers.append((name, value))
            continue
        if is_hop_by_hop(name, tokens) or lower in PROXY_SET or lower in ("x-forwarded-for", "expect"):
            continue
        if lower == "via" and via is not None:
            continue
        headers.append((name, value))
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    if environ.get("CONTENT_LENGTH"):
        headers.append(("Content-Length", environ["CONTENT_LENGTH"]))
    peer = environ.get("REMOTE_ADDR", "")
    previous = environ.get("HTTP_X_FORWARDED_FOR")
    headers.append(("X-Forwarded-For", f"{previous}, {peer}" if previous else peer))
    if "x-forwarded-host" not in claims:
        headers.append(("X-Forwarded-Host", routed_host))
    headers += [("X-Real-IP", client_ip), ("X-Forwarded-Proto", proto), ("X-Forwarded-Port", port),
                ("X-Request-ID", request_id)]
    if via is not None:
        headers.append(("Via", via))
    return headers


def downstream_response_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Backend response headers for the client: hop-by-hop, Server and Date removed.

    A header that is not valid HTTP (control characters) is dropped and logged
    rather than failing the whole response.
    """
    items = list(items)
    tokens: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            tokens |= _connection_tokens(value)
    result = []
    for name, value in items:
        if is_hop_by_hop(name, tokens) or name.lower() in RESPONSE_REPLACED:
            continue
        if not (_VALID_NAME.fullmatch(name) and _VALID_VALUE.fullmatch(value)):
            log.warning("dropping invalid response header %r from backend", name)
            continue
        result.append((name, value))
    return result
