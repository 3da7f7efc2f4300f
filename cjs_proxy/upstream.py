"""Forwarding to backends: the pooled ``requests`` session and the streaming relay.

The session owns the connection pools (one per backend, ``server.maxSockets`` each);
the hot path calls the session adapter's urllib3 pool directly, which skips
``Session.request`` (its cookie jar, environment proxies, redirects and default
headers, and ~40% of the CPU per request). Bodies stream both ways in chunks and
are never decoded. urllib3 errors are translated to ``ProxyError`` here and nowhere else.
"""

from __future__ import annotations

import http.cookiejar
import logging
import select
from collections.abc import Iterator
from typing import Any, BinaryIO

import requests
import urllib3
from gevent import monkey
from gunicorn.http.errors import NoMoreData, ParseException
from requests.adapters import HTTPAdapter
from urllib3 import connection as urllib3_connection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    EmptyPoolError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from .exceptions import (
    BackendBusy,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    ClientClosedRequest,
    PayloadTooLarge,
)

log = logging.getLogger("cjs_proxy.upstream")

#: Bytes read from either side per relay step; big enough for throughput, small
#: enough that many concurrent transfers keep a worker's memory flat.
CHUNK_SIZE = 64 * 1024
#: Bytes read from the client's body per step. gunicorn's reader fills a buffer of up to
#: 1 MiB and copies what is left of it on every read: 64 KiB reads cost ~6x the CPU.
BODY_READ_SIZE = 1024 * 1024
#: Backend pools kept per worker; the least recently used is closed past this.
BACKEND_POOLS = 1000


class UpstreamBroken(Exception):
    """The backend failed after the response started; the client connection must be cut."""


def use_kernel_poll_for_liveness_checks() -> None:
    """Let urllib3 check pooled connections with the kernel's poll, not gevent's.

    Before reusing a pooled connection urllib3 polls it with a zero timeout (has the
    backend closed it?). Under gevent that poll arms a ``Timeout`` and switches to the
    hub: ~5% of a request's CPU. A zero-timeout poll never blocks, so the original one
    is safe; any other wait keeps gevent's. This replaces a name in ``urllib3.connection``
    for the whole worker process, once, at start.
    """
    original_poll = monkey.get_original("select", "poll")
    cooperative_wait = urllib3_connection.wait_for_read

    def wait_for_read(sock: Any, timeout: float | None = None) -> bool:
        if timeout != 0:
            return cooperative_wait(sock, timeout=timeout)
        poller = original_poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))

    urllib3_connection.wait_for_read = wait_for_read


def make_session(max_sockets: int) -> requests.Session:
    """The session that owns every backend pool of a worker.

    It is never used to send a request on the hot path, but it is still locked down
    so that any use of it is safe: no environment proxies, no default headers, a
    cookie jar that stores nothing, no retries.
    """
    session = requests.Session()
    session.trust_env = False
    session.headers.clear()
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=BACKEND_POOLS, pool_maxsize=max_sockets,
                          pool_block=True, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class RequestBody:
    """The client's body as an iterator of chunks, checked against its declared length."""

    def __init__(self, stream: BinaryIO, length: int | None, limit: int | None = None) -> None:
        self.stream = stream
        self.length = length
        self.limit = limit  # server.maxRequestBodySize, enforced as a chunked body streams
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        remaining = self.length
        while remaining is None or remaining > 0:
            size = BODY_READ_SIZE if remaining is None else min(BODY_READ_SIZE, remaining)
            chunk = self._read(size)
            if not chunk:
                if remaining:
                    raise ClientClosedRequest(f"client sent {self.sent} of {self.length} body bytes")
                return
            self.sent += len(chunk)
            if self.limit is not None and self.sent > self.limit:
                raise PayloadTooLarge(f"chunked body exceeds {self.limit} bytes")
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk

    def _read(self, size: int) -> bytes:
        try:
            return self.stream.read(size)
        except NoMoreData as exc:
            raise ClientClosedRequest("client closed the connection mid-body") from exc
        except OSError as exc:
            raise ClientClosedRequest(f"client connection lost: {exc}") from exc
        except ParseException as exc:
            raise BadRequest(f"malformed request body: {exc}") from exc


class UpstreamResponse:
    """A backend's answer whose body has not been read yet."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, backend_url: str) -> None:
        self.raw = raw
        self.backend_url = backend_url
        self.status: int = raw.status
        self.reason: str = raw.reason or ""
        self.headers: list[tuple[str, str]] = list(raw.headers.items())
        self.bytes_read = 0
        self._done = False

    def iter_body(self) -> Iterator[bytes]:
        """Relay the body as it arrives (``read1``: no waiting for a full chunk)."""
        raw = self.raw
        try:
            while True:
                chunk = raw.read1(CHUNK_SIZE, decode_content=False)
                if not chunk:
                    break
                self.bytes_read += len(chunk)
                yield chunk
        except (HTTPError, OSError) as exc:
            raise UpstreamBroken(f"{self.backend_url}: body broken after {self.bytes_read} bytes: {exc}") from exc
        self._done = True

    def close(self) -> None:
        """Give the connection back: reusable if the body was read to the end."""
        if not self._done:
            self.raw.close()
        self.raw.release_conn()


class Upstream:
    """Sends requests to backends through per-backend pools owned by one session."""

    def __init__(self, session: requests.Session, connect_timeout: float, read_timeout: float) -> None:
        self.session = session
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.pool_timeout = connect_timeout
        self._pools: dict[str, HTTPConnectionPool] = {}

    def pool_for(self, backend_url: str) -> HTTPConnectionPool:
        pool = self._pools.get(backend_url)
        if pool is None:
            adapter = self.session.get_adapter(backend_url)
            pool = adapter.poolmanager.connection_from_url(backend_url)  # type: ignore[attr-defined]
            if len(self._pools) >= BACKEND_POOLS:
                self._pools.clear()
            self._pools[backend_url] = pool
        return pool

    def send(self, backend_url: str, method: str, target: str, headers: dict[str, str],
             body: RequestBody | None) -> UpstreamResponse:
        """Send the request; translate every transport failure to a ``ProxyError``."""
        try:
            raw = self._urlopen(backend_url, method, target, headers, body)
        except ClosedPoolError:  # the session evicted this pool: take a fresh one, once
            self._pools.pop(backend_url, None)
            raw = self._urlopen(backend_url, method, target, headers, body)
        return UpstreamResponse(raw, backend_url)

    def _urlopen(self, backend_url: str, method: str, target: str, headers: dict[str, str],
                 body: RequestBody | None) -> urllib3.BaseHTTPResponse:
        pool = self.pool_for(backend_url)
        try:
            return pool.urlopen(
                method, target, body=body, headers=headers,
                chunked=body is not None and body.length is None,
                retries=False, redirect=False, assert_same_host=False,
                timeout=self.timeout, pool_timeout=self.pool_timeout,
                preload_content=False, decode_content=False, release_conn=False,
            )
        except ClosedPoolError:
            raise
        except EmptyPoolError as exc:
            raise BackendBusy(f"{backend_url}: all {pool.pool.maxsize if pool.pool else '?'} connections busy") from exc
        except NewConnectionError as exc:  # before ConnectTimeoutError: it subclasses it
            raise BackendUnavailable(f"{backend_url}: {_reason(exc)}", before_request=True) from exc
        except ConnectTimeoutError as exc:
            raise BackendTimeout(f"{backend_url}: connect timed out", before_request=True) from exc
        except ReadTimeoutError as exc:
            raise BackendTimeout(f"{backend_url}: no answer within {self.timeout.read_timeout}s") from exc
        except (ProtocolError, HTTPError, OSError) as exc:
            raise BackendUnavailable(f"{backend_url}: {_reason(exc)}") from exc

    def close(self) -> None:
        self.session.close()


def _reason(exc: Any) -> str:
    inner = exc.args[-1] if getattr(exc, "args", None) else exc
    return str(getattr(inner, "reason", None) or inner)
