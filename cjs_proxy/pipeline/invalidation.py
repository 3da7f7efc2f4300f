"""The route cache's invalidation feed: Redis client-side tracking, checked on every request.

``RouteCache`` (``router``) asks ``changed()`` before serving a route from memory, so
the check must cost next to nothing: one kernel poll of two sockets
(``sockets.readable_now``), no Redis command, no hub switch. Only when bytes arrived
are they read, through redis-py's own parser, and the keys they name handed back, so
the cache drops only what was read from them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import gevent
import redis
from redis.connection import AbstractConnection
from redis.sentinel import SentinelManagedConnection

from cjs_proxy.pipeline.redis_keys import KeySpace, split_driver_url
from cjs_proxy.pipeline.sentinel import feed_pool as sentinel_feed_pool
from cjs_proxy.pipeline.sentinel_url import is_sentinel_url, parse_sentinel_url
from cjs_proxy.pipeline.sockets import readable_now

log = logging.getLogger("cjs_proxy.pipeline.invalidation")

#: Where Redis sends the invalidation messages of a RESP2 client (redirected tracking).
INVALIDATE_CHANNEL = "__redis__:invalidate"
INVALIDATE_CHANNEL_BYTES = INVALIDATE_CHANNEL.encode()
#: Seconds between two attempts to (re)open the feed.
RECONNECT_INTERVAL = 1.0


def descriptor(connection: AbstractConnection) -> int:
    """The connection's socket descriptor, for ``readable_now``.

    redis-py has no public accessor for a connection's socket. Its public readiness check,
    ``Connection.can_read(0)``, polls through ``select.poll``, which is gevent's in the
    workers: 15 us and a hub switch per request instead of 1 us. ``_get_socket()`` is the
    accessor redis-py's connection classes implement for their own socket-level features
    (``getpeername``, maintenance notifications); this is the one place that uses it.
    """
    sock = connection._get_socket()
    if sock is None:
        raise redis.exceptions.ConnectionError("not connected")
    return sock.fileno()


#: What changed: False nothing, True anything may have (see ``InvalidationFeed.changed``),
#: else the keys named, never an empty list. Truthy whenever something changed.
Changes = bool | list[str]


def drain(connection: AbstractConnection) -> list[object]:
    """Read every whole reply that arrived, without waiting (hiredis keeps a partial one
    for the next call).

    Raises ``redis.exceptions.ConnectionError`` when Redis closed the connection.
    """
    replies = []
    while True:
        try:
            replies.append(connection.read_response(timeout=0, disconnect_on_error=False))
        except redis.exceptions.TimeoutError:  # nothing more to read now
            return replies


def changed_keys(replies: list[object], prefix: str) -> Changes:
    """The keys the listener's ``replies`` say changed, without the driver's ``prefix``;
    True when they say everything may have.

    In RESP2, a redirected invalidation is a pub/sub message ``[b"message",
    b"__redis__:invalidate", payload]`` whose payload is the list of keys written (in BCAST
    mode Redis gathers those of one event-loop turn, per tracked prefix, in one message),
    or null when the whole data set went (FLUSHALL, FLUSHDB). Anything else was never
    asked for: it is taken as "everything", the safe reading.
    """
    keys: list[str] = []
    for reply in replies:
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"
                and reply[1] == INVALIDATE_CHANNEL_BYTES and isinstance(reply[2], list)):
            return True  # a flush (null payload), or not an invalidation at all
        for raw in reply[2]:
            key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            keys.append(key[len(prefix):] if key.startswith(prefix) else key)
    return keys


def feed_pool(url: str, timeout: float) -> tuple[redis.ConnectionPool, str]:
    """(the pool the feed's connections come from, the key prefix).

    RESP2: invalidations arrive as pub/sub messages on the listener connection. Through
    Sentinel, the pool asks the sentinels where the node is at every (re)connection, so
    the feed follows a failover: the old master's connections break (it died, or
    Sentinel killed its clients when it demoted it) and the next attempt opens the feed
    on the new one.
    """
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        return sentinel_feed_pool(target, timeout), target.prefix
    redis_url, prefix = split_driver_url(url)
    pool = redis.ConnectionPool.from_url(redis_url, socket_timeout=timeout,
                                         socket_connect_timeout=timeout, protocol=2)
    return pool, prefix


def same_node(first: AbstractConnection, second: AbstractConnection) -> None:
    """Connect ``second`` to the node ``first`` reached: tracking redirects to a client
    id, which only means something on the node that gave it. A sentinel pool may pick
    a different replica (or a new master) for each connection it makes."""
    first.connect()
    if isinstance(second, SentinelManagedConnection):
        second.connect_to((first.host, first.port))  # type: ignore[attr-defined]


def command(connection: AbstractConnection, *args: object) -> object:
    connection.send_command(*args)
    return connection.read_response()


class InvalidationFeed:
    """Tells which routing keys changed, using Redis client-side tracking (Redis 6+).

    One connection is subscribed to ``__redis__:invalidate``; a second one turns on
    ``CLIENT TRACKING ... BCAST`` for the ``redis_keys.ROUTING`` prefixes (or the
    ``prefixes`` given: the certificate cache tracks ``tls:``) with its messages
    redirected to the first. Redis then announces every change to those keys, by anyone,
    on the first connection, naming the keys. ``changed()`` checks, without blocking,
    whether anything arrived on either, and reads it if so (the second one only ever
    speaks when it is closed, and its tracking ends with it: that is "everything").
    While the feed is down (starting, Redis restarting, Redis < 6) ``changed()`` answers
    True, so nothing is served from the cache; it reconnects at most once a second, and
    answers True once more right after: a change made while it was down was never
    announced, and a lookup that read Redis then must not be stored.
    """

    def __init__(self, url: str, timeout: float, clock: Callable[[], float] = time.monotonic,
                 prefixes: list[str] | None = None) -> None:
        self.pool, prefix = feed_pool(url, timeout)
        self.keys = KeySpace(prefix)
        #: The prefixed key prefixes tracked: the routing ones unless another cache asks for its own.
        self.prefixes = self.keys.routing_prefixes() if prefixes is None else prefixes
        self.clock = clock
        self._connections: list[AbstractConnection] = []
        self._descriptors: tuple[int, ...] = ()
        self._connecting: gevent.Greenlet | None = None
        self._next_attempt = 0.0
        #: Set when tracking (re)starts: the next ``changed()`` says everything.
        self._fresh = False
        self.unsupported = False

    @property
    def connected(self) -> bool:
        """True while Redis is tracking: then ``changed()`` answering False can be trusted."""
        return bool(self._connections)

    def changed(self) -> Changes:
        """What changed since the last call: False (nothing), the keys Redis named (without
        the driver's prefix), or True (anything may have: down, just reconnected, a flush)."""
        if not self._connections:
            self._reconnect_soon()
            return True
        if self._fresh:
            self._fresh = False
            return True
        try:
            if not readable_now(*self._descriptors):
                return False
            listener, tracker = self._connections
            keys = changed_keys(drain(listener), self.keys.prefix)
            if drain(tracker):
                return True
        except (redis.exceptions.RedisError, OSError, ValueError) as exc:
            log.warning("route cache off: invalidation feed lost (%s); reconnecting", exc)
            self.close()
            return True
        return keys or False

    def _reconnect_soon(self) -> None:
        """Open the feed in its own greenlet, never on a request's time, at most once a second."""
        if self._connecting is None and not self.unsupported and self.clock() >= self._next_attempt:
            self._next_attempt = self.clock() + RECONNECT_INTERVAL
            self._connecting = gevent.spawn(self._connect)

    def _connect(self) -> None:
        try:
            self._open()
        finally:
            self._connecting = None

    def _open(self) -> None:
        # A ConnectionPool's connections are AbstractConnections (redis-py types them by interface).
        listener = cast(AbstractConnection, self.pool.make_connection())
        tracker = cast(AbstractConnection, self.pool.make_connection())
        try:
            same_node(listener, tracker)
            client_id = command(listener, "CLIENT", "ID")
            command(listener, "SUBSCRIBE", INVALIDATE_CHANNEL)
            prefixes = [arg for prefix in self.prefixes for arg in ("PREFIX", prefix)]
            command(tracker, "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes)
            descriptors = (descriptor(listener), descriptor(tracker))
        except redis.exceptions.ResponseError as exc:
            self.unsupported = True
            log.warning("route cache off: redis does not support client tracking (%s)", exc)
            listener.disconnect()
            tracker.disconnect()
            return
        except (redis.exceptions.RedisError, OSError) as exc:
            log.debug("invalidation feed not connected: %s", exc)
            listener.disconnect()
            tracker.disconnect()
            return
        self._connections = [listener, tracker]
        self._descriptors = descriptors
        self._fresh = True

    def close(self) -> None:
        for connection in self._connections:
            connection.disconnect()
        self._connections = []
        self._descriptors = ()
