"""The record of one exchange (request and answer), and how it becomes an access-log line.

An ``Exchange`` only records: each stage of the pipeline writes down what it did (the
route it resolved, the backend it tried, the status and bytes it sent), and the access
log and the debug headers read it back. Stages hand each other their results
explicitly; nothing is passed between them through this record.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cjs_proxy.pipeline.accesslog import AccessEntry

if TYPE_CHECKING:
    from cjs_proxy.pipeline.passive_health import Backend
    from cjs_proxy.pipeline.router import Route


class Exchange:
    """What the access log (and ``x-debug-*``) needs to know about one request, filled in as it goes."""

    __slots__ = (
        "backend",
        "bytes_sent",
        "client_ip",
        "decision",
        "environ",
        "extra",
        "held",
        "request_id",
        "retries",
        "route",
        "started",
        "status",
        "upstream_time",
        "verdict",
        "wall_started",
    )

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.started = time.perf_counter()
        self.wall_started = time.time()
        self.client_ip: str = environ.get("REMOTE_ADDR") or "-"
        self.request_id = "-"
        #: The route last resolved and the backend last tried (the log's vhost and upstream).
        self.route: Route | None = None
        self.backend: Backend | None = None
        #: Seconds the last backend took to answer (its head), None if none was asked.
        self.upstream_time: float | None = None
        self.status = 0
        self.bytes_sent = 0
        #: Appended to the log line as is (a tunnel's byte counts and duration).
        self.extra = ""
        #: The backend URL counted in flight for its balancing policy (``Balancer.hold``), if any.
        self.held: str | None = None
        #: Backends tried again after a failure.
        self.retries = 0
        #: The limiter's verdict and decision at the first lookup (a retry's lookup has none).
        self.verdict: Any = None
        self.decision = "-"

    def answered(self, status: int, bytes_sent: int) -> None:
        """The proxy answered itself: the whole body is known up front."""
        self.status, self.bytes_sent = status, bytes_sent


def access_entry(exchange: Exchange) -> AccessEntry:
    """The access-log fields of an exchange (nginx's combined format plus vhost, upstream, timings)."""
    environ = exchange.environ
    route, backend = exchange.route, exchange.backend
    return AccessEntry(
        remote_addr=exchange.client_ip,
        method=environ.get("REQUEST_METHOD", "-"),
        uri=environ.get("RAW_URI", "-"),
        protocol=environ.get("SERVER_PROTOCOL", "-"),
        status=exchange.status,
        bytes_sent=exchange.bytes_sent,
        referer=environ.get("HTTP_REFERER", "-"),
        user_agent=environ.get("HTTP_USER_AGENT", "-"),
        vhost=route.identifier if route else "-",
        upstream=upstream_address(backend.url) if backend else "-",
        request_time=time.perf_counter() - exchange.started,
        upstream_time=exchange.upstream_time,
        request_id=exchange.request_id,
        started=exchange.wall_started,
        extra=exchange.extra,
        limit=exchange.decision,
    )


def upstream_address(url: str) -> str:
    """``host:port`` of a backend URL, as nginx logs ``$upstream_addr``."""
    parts = urlsplit(url)
    return parts.netloc or url
