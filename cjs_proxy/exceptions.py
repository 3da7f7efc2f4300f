"""The proxy's own failures: one base class, each leaf bound to one HTTP status and error page.

Stages of the request pipeline raise these; ``wsgi.py`` turns them into responses in
exactly one place, so a status code is decided where the failure is understood and
rendered where responses are made.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every failure the proxy answers itself.

    ``status`` picks the HTTP status and the error page (``errors/<status>.html``);
    ``reason`` is a short human message, shown in the plain-text fallback, the error
    log and the ``x-debug-error`` header.
    """

    status = 500
    reason = "Internal proxy error"
    #: True when whoever raised it already logged it (rate-limited): no line per answer then.
    logged = False

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason
        #: Extra response headers for this answer (``Retry-After``, ``RateLimit``...).
        self.headers: list[tuple[str, str]] = []


class BadRequest(ProxyError):
    """The request itself is malformed (headers, framing, Host)."""

    status = 400
    reason = "Bad request"


class InvalidHost(BadRequest):
    """Missing, empty, duplicated or syntactically invalid ``Host`` header."""

    reason = "Missing or invalid Host header"


class UnknownHost(ProxyError):
    """No frontend matches the host.

    Hipache answers 400 here (its ``error_400.html`` says "no application configured"),
    and its clients and tests rely on it, so we do too.
    """

    status = 400
    reason = "No application configured for this host"


class PayloadTooLarge(ProxyError):
    """The declared request body exceeds ``server.maxRequestBodySize``."""

    status = 413
    reason = "Request body too large"


class ClientClosedRequest(ProxyError):
    """The client went away (or broke the body framing) while its body was being relayed.

    Logged as 499, nginx's code for it; nobody is left to read the answer.
    """

    status = 499
    reason = "Client closed the request"


class RequestTimeout(ProxyError):
    """The client stopped sending its body for ``server.bodyTimeout`` seconds (nginx's
    ``client_body_timeout``): answered 408, and its connection, like the backend's, closed."""

    status = 408
    reason = "The request body stopped arriving"


class NoLiveBackend(ProxyError):
    """The frontend exists but lists no backend we can use."""

    status = 502
    reason = "No backend available for this host"


class InvalidFrontend(NoLiveBackend):
    """The frontend lists backends, but none with a usable URL: bad data in Redis.

    The health policy logs it, naming the ``frontend:`` key, at most once per interval;
    a line per request would let one broken entry flood the log.
    """

    reason = "No usable backend URL for this host"
    logged = True


class BackendUnavailable(ProxyError):
    """The chosen backend refused the connection or broke it before answering.

    ``before_request`` is true when the backend cannot have seen any byte of the
    request (connection refused), so another backend may be tried.
    """

    status = 502
    reason = "Backend unavailable"

    def __init__(self, detail: str | None = None, before_request: bool = False) -> None:
        super().__init__(detail)
        self.before_request = before_request


class BackendClosed(BackendUnavailable):
    """A connection taken from the pool was closed by the backend before any answer byte.

    Backends close idle keep-alive connections whenever they like; such a request is
    sent again once on a fresh connection, if no body byte was consumed.
    """


class BackendTimeout(BackendUnavailable):
    """The chosen backend did not connect or answer within ``server.tcpTimeout``."""

    status = 504
    reason = "Backend timed out"


class LoopDetected(ProxyError):
    """The request carries this node's own ``Via`` mark: it was forwarded here by this node.

    A frontend that routes (directly or not) to the proxy itself would otherwise make
    each request loop until a timeout, holding a connection per hop.
    """

    status = 508
    reason = "Loop detected"


class BackendDenied(BackendUnavailable):
    """The backend's address is in ``server.denyBackends``: it is never connected to.

    The proxy logs it itself (once per interval, naming the frontend), and it never counts
    against the backend's health: the backend is forbidden, not unwell.
    """

    reason = "Backend address not allowed"
    logged = True

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, before_request=True)


class BackendBusy(ProxyError):
    """Every connection this worker may open to the backend (``server.maxSockets``) is busy."""

    status = 503
    reason = "Backend connection limit reached"


class StoreUnavailable(ProxyError):
    """Redis cannot be reached and no recent route for this host is known."""

    status = 503
    reason = "Routing store unavailable"


class RateLimited(ProxyError):
    """A client IP or the frontend's tier is over its limit; the backend is not asked."""

    status = 429
    reason = "Too many requests"


class LimiterUnavailable(ProxyError):
    """Redis cannot decide the rate limits and ``rateLimit.onError`` is ``closed``."""

    status = 503
    reason = "Rate limiter unavailable"


class BackendProtocolError(BackendUnavailable):
    """The backend's answer is not strict HTTP/1.1 (framing, header bytes, an unasked upgrade).

    Nothing of it is relayed and its connection is closed: a response that two parsers
    could read differently is how one client's answer ends up in another's.
    """

    reason = "Backend sent an invalid response"


class MethodNotAllowed(ProxyError):
    """``CONNECT``: this is a reverse proxy, never a tunnel to an address the client picks."""

    status = 405
    reason = "Method not allowed"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.headers.append(("Allow", "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"))


class UnsupportedTransferCoding(ProxyError):
    """A request body with a transfer coding other than ``chunked`` (``gzip, chunked``...).

    Dropping the coding would hand the backend bytes it cannot read as sent, so the
    request is refused, as RFC 9112 section 6.1 asks of a server.
    """

    status = 501
    reason = "Transfer coding not implemented"
