"""Forwarding to backends: pooled connections that speak strict HTTP/1.1, and streaming.

The ``requests`` session owns the connection pools (one per backend, ``server.maxSockets``
connections each; ``backend_pools``), which hold ``BackendConnection``s; ``Upstream`` writes
the request head itself (the target byte for byte, nothing invented) and reads the answer with
the strict parser of ``http1``. A connection goes back to its pool only after a response
read to its end and framed without ambiguity; in every other case it is closed.
Bodies stream both ways in chunks and are never decoded. Transport failures become
``ProxyError``s here and nowhere else.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import cast

import requests
from urllib3.exceptions import ClosedPoolError, EmptyPoolError

from cjs_proxy.boundedcache import BoundedCache
from cjs_proxy.eventlog import EventLog
from cjs_proxy.exceptions import (
    BackendBusy,
    BackendClosed,
    BackendTimeout,
    BackendUnavailable,
)
from cjs_proxy.pipeline.addresses import Network
from cjs_proxy.pipeline.backend_pools import (
    BACKEND_POOLS,
    BackendAdapter,
    BackendConnection,
    BackendPool,
    make_session,
)
from cjs_proxy.pipeline.http1 import ResponseHead, ResponseReader, UpstreamBroken, encode_request_head
from cjs_proxy.pipeline.request_body import RequestBody
from cjs_proxy.pipeline.slow_clients import ClientWatch, SlowClients
from cjs_proxy.pipeline.sockets import send_all
from cjs_proxy.pipeline.spool import SpoolBudget, SpoolingBody

__all__ = ["BackendAdapter", "BackendConnection", "RequestBody", "Upstream", "UpstreamBroken", "UpstreamResponse",
           "make_session"]

Headers = list[tuple[str, str]]
log = logging.getLogger("cjs_proxy.pipeline.upstream")


class UpstreamResponse:
    """A backend's answer whose body has not been read yet; ``close`` settles its connection."""

    def __init__(self, reader: ResponseReader, head: ResponseHead, conn: BackendConnection,
                 pool: BackendPool | None) -> None:
        self.reader = reader
        self.head = head
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.conn = conn
        self.pool = pool
        self._closed = False
        #: Gives back what this connection counts against outside the pools (a tunnel's slot).
        self.on_release: Callable[[], None] | None = None
        #: The client's waits, watched while the body is relayed (``slow_clients``).
        self.watch: ClientWatch | None = None
        #: The worker's spooled bytes; with a watch, an answer its client stops taking is spooled.
        self.spool_budget: SpoolBudget | None = None
        self._body: SpoolingBody | None = None

    @property
    def backend_url(self) -> str:
        return self.reader.backend_url

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read

    def iter_body(self) -> Iterator[bytes]:
        """Relay the body as it arrives; ``UpstreamBroken`` if the backend cuts it short."""
        if self.watch is None:
            return self.reader.iter_body()
        if self.spool_budget is None:  # server.spoolMaxBytes: 0
            return self.watch.relay(self.reader.iter_body())
        body = self._body = SpoolingBody(self.reader, self.spool_budget, self.give_back_connection)
        self.watch.spool = body.spool_rest
        return self.watch.relay(iter(body))

    def detach(self) -> tuple[socket.socket, bytes]:
        """After a ``101``: the socket and the backend's first bytes, for a tunnel."""
        sock = self.conn.sock
        assert sock is not None, "detach() after close()"
        self.conn.sock = None
        self._closed = True
        return sock, self.reader.leftover()

    def close(self) -> None:
        """The connection settled, and the answer's spool (if it was spooled) deleted (idempotent)."""
        try:
            self.give_back_connection()
        finally:
            if self._body is not None:
                self._body.close()

    def give_back_connection(self) -> None:
        """Back to the pool if the exchange ended cleanly, otherwise closed (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not (self.reader.complete and self.reader.reusable):
                self.conn.close()
            if self.pool is not None:
                self.pool.checkin(self.conn)
        finally:
            self.release_slot()

    def release_slot(self) -> None:
        """Once the connection is gone (closed, or a detached tunnel ended): its slot back (idempotent)."""
        release, self.on_release = self.on_release, None
        if release is not None:
            release()


class Upstream:
    """Sends requests to backends through per-backend pools owned by one session."""

    def __init__(self, session: requests.Session, connect_timeout: float, read_timeout: float,
                 deny: tuple[Network, ...] = (), max_tunnels: int = 1000, per_client: int = 0,
                 spools: SpoolBudget | None = None) -> None:
        self.session = session
        #: ``server.maxSocketsPerClient`` (0: half of each pool), see ``fair_share``.
        self.per_client = per_client
        self.events = EventLog(log)
        #: ``websocket.maxPerBackend``: tunnels are outside the pools, so bounded here.
        self.max_tunnels = max_tunnels
        self.tunnels: dict[str, int] = {}
        #: Transfers that hold a pooled connection while they wait on their client.
        self.slow = SlowClients()
        #: The bytes of answers spooled for clients that stopped taking them (``spool``); None: off.
        self.spools = spools
        #: ``server.denyBackends``, handed to every connection the pools make.
        self.deny = deny
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = connect_timeout
        #: The session's pools by URL, found without asking it each time, as bounded as the
        #: session's own (which closes its least recently used: ``send`` then takes a fresh one).
        self._pools: BoundedCache[str, BackendPool] = BoundedCache(BACKEND_POOLS)

    def pool_for(self, backend_url: str) -> BackendPool:
        pool = self._pools.get(backend_url)
        if pool is None:
            adapter = cast(BackendAdapter, self.session.get_adapter(backend_url))
            pool = cast(BackendPool, adapter.poolmanager.connection_from_url(backend_url))
            pool.conn_kw["deny"] = self.deny  # its connections are made lazily, with these
            pool.fair.set_share(self.per_client)
            self._pools[backend_url] = pool
        return pool

    def send(self, backend_url: str, method: str, target: str, headers: Headers, body: RequestBody | None,
             on_informational: Callable[[ResponseHead], None] | None = None,
             client: socket.socket | None = None, client_ip: str | None = None) -> UpstreamResponse:
        """Send the request on a pooled connection and read the response head.

        The body's first bytes are read before a connection is taken; while one is held,
        the waits on ``client`` are watched (``slow_clients``) and the exchange counts
        against ``client_ip``'s share of the pool (``fair_share``) until its connection is
        back in the pool or closed: ``UpstreamResponse.close``, or here on an error.
        """
        if body is not None:
            body.preread()  # a no-op once done (a retry)
            if body.length is None:  # the length is unknown: chunked, re-framed by us
                headers = [*headers, ("Transfer-Encoding", "chunked")]
        head = encode_request_head(method, target, headers)  # before a connection is taken: it may fail
        watched = client is not None
        try:
            pool, conn, lane = self._connection(backend_url, body, watched, client_ip)
        except ClosedPoolError:  # the session evicted this pool: take a fresh one, once
            self._pools.pop(backend_url, None)
            pool, conn, lane = self._connection(backend_url, body, watched, client_ip)
        holding = pool.fair.take(client_ip)  # nothing between the checkout and this can fail
        watch = None
        if client is not None:
            watch = self.slow.watch(pool.share, client, backend_url, lane, client_ip)
            holding.then = watch.close
        if body is not None:
            body.watch = watch
        try:
            reader, response_head = self._exchange(conn, backend_url, head, body, method, on_informational)
        except BaseException:
            conn.close()
            pool.checkin(conn)
            holding.release()
            raise
        finally:
            if body is not None:
                body.watch = None
        response = UpstreamResponse(reader, response_head, conn, pool)
        response.watch, response.on_release = watch, holding.release
        response.spool_budget = self.spools
        return response

    def _connection(self, backend_url: str, body: RequestBody | None, watched: bool,
                    address: str | None) -> tuple[BackendPool, BackendConnection, bool]:
        """The pool, a connection from it, and whether a slow lane was taken for the upload."""
        pool = self.pool_for(backend_url)
        lane = watched and self._upload_lane(pool, backend_url, body)
        try:
            return pool, self._checkout(pool, backend_url, address), lane
        except BaseException:
            if lane:
                pool.share.give_back_lane()
            raise

    def _upload_lane(self, pool: BackendPool, backend_url: str, body: RequestBody | None) -> bool:
        """A body still streaming after its pre-read is a slow transfer from the start: it waits
        for one of the pool's slow lanes (503 past the pool's timeout), so uploads never take the
        connections kept for the others. True when a lane was taken (the watch gives it back)."""
        if body is None or body.complete or pool.share.lanes == 0:
            return False
        if not pool.share.take_lane(self.pool_timeout):
            raise BackendBusy(f"{backend_url}: all {pool.share.lanes} connections for slow transfers busy")
        return True

    def _checkout(self, pool: BackendPool, backend_url: str, address: str | None) -> BackendConnection:
        """A connection once ``address`` may take one (``fair_share``), all within the pool's timeout.

        The rule is applied when the request arrives, and again when a connection comes to it
        after a wait in the pool's queue: the address may have reached its share meanwhile
        (requests queued while it was under it). Past it, the connection goes back to the pool
        and the request waits for its turn like any request past its share.
        """
        deadline = time.monotonic() + self.pool_timeout
        while True:
            self._wait_turn(pool, backend_url, address, deadline)
            if pool.pool is not None and pool.pool.empty():  # this request would wait for the pool
                self.slow.relieve(pool.share, address)
            try:
                conn = pool.checkout(max(0.0, deadline - time.monotonic()))
            except EmptyPoolError as exc:
                raise BackendBusy(f"{backend_url}: all {pool.pool.maxsize if pool.pool else '?'} "
                                  "connections busy") from exc
            if pool.fair.may_take(address, pool.free() + 1):  # as if the connection were still free
                return conn
            pool.checkin(conn)
            pool.fair.wake()

    def _wait_turn(self, pool: BackendPool, backend_url: str, address: str | None, deadline: float) -> None:
        """Until ``address`` may take a connection of ``pool`` under its fair share; 503 at ``deadline``."""
        fair = pool.fair
        if fair.may_take(address, pool.free()):
            return
        self.events.record(f"fair:{backend_url}",
                           f"{backend_url}: requests of {address} wait, past its share of the pool "
                           f"({fair.holding(address)} held, share {fair.share} of {fair.size})")
        if not fair.wait_turn(address, pool.free, deadline - time.monotonic()):
            raise BackendBusy(f"{backend_url}: {address} holds {fair.holding(address)} connections, past "
                              f"its share ({fair.share} of {fair.size}), and the rest are kept for others")

    def open_upgrade(self, backend_url: str, method: str, target: str, headers: Headers,
                     upgrade: str) -> UpstreamResponse:
        """An upgrade request on a fresh connection of its own (a tunnel is never pooled).

        The answer is a ``101`` for ``upgrade`` (``detach`` the socket), or an ordinary
        response, relayed as such; any other ``101`` is a ``BackendProtocolError``.
        """
        pool = self.pool_for(backend_url)
        self._take_tunnel(backend_url)
        conn = BackendConnection(pool.host, pool.port, tls=pool.conn_kw.get("tls"), deny=self.deny)
        head = encode_request_head(method, target, headers)
        try:
            reader, response_head = self._exchange(conn, backend_url, head, None, method, None, upgrade)
        except BaseException:
            conn.close()
            self._give_back_tunnel(backend_url)
            raise
        response = UpstreamResponse(reader, response_head, conn, None)
        response.on_release = lambda: self._give_back_tunnel(backend_url)
        return response

    def _take_tunnel(self, backend_url: str) -> None:
        """One more tunnel to ``backend_url``, or 503 at ``websocket.maxPerBackend``: each holds a
        backend socket for as long as it lives, which no pool bounds."""
        count = self.tunnels.get(backend_url, 0)
        if count >= self.max_tunnels:
            raise BackendBusy(f"{backend_url}: {count} WebSocket tunnels open (websocket.maxPerBackend)")
        self.tunnels[backend_url] = count + 1

    def _give_back_tunnel(self, backend_url: str) -> None:
        count = self.tunnels.pop(backend_url, 0) - 1
        if count > 0:
            self.tunnels[backend_url] = count

    def _exchange(self, conn: BackendConnection, backend_url: str, head: bytes, body: RequestBody | None,
                  method: str, on_informational: Callable[[ResponseHead], None] | None,
                  upgrade: str | None = None) -> tuple[ResponseReader, ResponseHead]:
        """Write the request and read the response head.

        A pooled connection the backend closed while it sat idle fails before any answer
        byte (``BackendClosed``); the request goes again once on a fresh connection,
        provided no body byte was consumed.
        """
        reused = conn.sock is not None
        while True:
            sock = conn.sock or conn.connect(self.connect_timeout, backend_url)
            sock.settimeout(self.read_timeout)
            reader = ResponseReader(sock, backend_url)
            try:
                self._write_request(sock, backend_url, head, body)
                return reader, reader.read_head(method, upgrade, on_informational)
            except BackendClosed:
                if not reused or (body is not None and body.sent and not body.replayable):
                    raise
                conn.close()
                reused = False

    def _write_request(self, sock: socket.socket, backend_url: str, head: bytes, body: RequestBody | None) -> None:
        try:
            if body is None:
                send_all(sock, head)
                return
            first = True
            for chunk in body:
                if body.length is None:
                    chunk = b"%X\r\n%b\r\n" % (len(chunk), chunk)
                sock.sendall(head + chunk if first else chunk)
                first = False
            tail = b"0\r\n\r\n" if body.length is None else b""
            if first or tail:
                sock.sendall(head + tail if first else tail)
        except TimeoutError as exc:
            raise BackendTimeout(f"{backend_url}: stopped reading the request for {self.read_timeout}s") from exc
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The backend may have answered early (413...) and closed: its answer is read next.
            if body is None or not body.sent:
                raise BackendClosed(f"{backend_url}: connection closed while sending: {exc}") from exc
        except OSError as exc:
            raise BackendUnavailable(f"{backend_url}: {exc}") from exc

    def close(self) -> None:
        self.session.close()
