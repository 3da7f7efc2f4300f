"""Hipache's ``x-debug-*`` response headers, for a request carrying ``X-Debug``.

Only with ``server.debug`` (off by default): they show any client the backends'
internal URLs. Values from Redis and error details are escaped, so an identifier
holding CR/LF can neither break the response nor add a header.
"""

from __future__ import annotations

import os
import time
from typing import Any

from cjs_proxy.pipeline.exchange import Exchange
from cjs_proxy.pipeline.headers import escape_header_value

Headers = list[tuple[str, str]]


def wants_debug(enabled: bool, environ: dict[str, Any]) -> bool:
    """``server.debug`` is on and the client asked (``X-Debug``, any value)."""
    return enabled and "HTTP_X_DEBUG" in environ


def debug_headers(exchange: Exchange) -> Headers:
    """The route, the backend and the times (milliseconds) recorded so far."""
    headers = []
    if exchange.route is not None:
        headers += [("x-debug-vhost", escape_header_value(exchange.route.identifier)),
                    ("x-debug-frontend-key", exchange.route.frontend.key)]
    if exchange.backend is not None:
        headers += [("x-debug-backend-url", escape_header_value(exchange.backend.url)),
                    ("x-debug-backend-id", str(exchange.backend.id))]
    headers.append(("x-debug-time-total", f"{(time.perf_counter() - exchange.started) * 1000:.3f}"))
    headers.append(("x-debug-worker", str(os.getpid())))  # which worker answered
    if exchange.upstream_time is not None:
        headers.append(("x-debug-time-backend", f"{exchange.upstream_time * 1000:.3f}"))
    return headers


def error_debug_headers(exchange: Exchange, detail: str) -> Headers:
    """On a page the proxy answers itself: the error, and the rest once a route was resolved."""
    headers = [("x-debug-error", escape_header_value(detail))]
    if exchange.route is not None:
        headers += debug_headers(exchange)
    return headers
