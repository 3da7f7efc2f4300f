"""Limited lookups of one loop turn share one Redis round trip.

With rate limits on, every request needs Redis to decide (the counters live there), so
the route cache cannot answer for it. Instead of one EVALSHA per request, each on its own
pooled connection, requests that reach the limiter in the same turn of the worker's event
loop are sent together: one pipelined batch of EVALSHAs (not a transaction) on one
connection, written in one send and read back in order. Each request keeps its own
script call, so each is still decided atomically in Redis, with the same keys and the
same arguments as alone; only the network round trip and its greenlet switches are shared.

Nothing waits for a batch to fill. The first request of a turn leads: it lets the
greenlets that were ready in that turn have their go (they join its batch), then sends
the batch itself and hands each its reply, so a lone request is sent at once, with no
greenlet of its own to start. Only when every one of the batcher's connections has a
batch in flight do requests wait, together, for the next.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import gevent
import hiredis
import redis
from gevent.hub import Waiter, get_hub
from gevent.lock import BoundedSemaphore
from redis._parsers.base import BaseParser

from cjs_proxy.pipeline.sockets import readable_now, send_all

#: Most script calls sent in one batch (a larger turn is split): bounds the reply that one
#: connection must read before any request of the batch goes on.
MAX_BATCH = 64
#: Batches in flight at once, each on its own connection. Requests that arrive while
#: every connection is busy wait together and leave in the next batch.
MAX_CONNECTIONS = 8
#: Bytes asked of the socket per read of replies.
READ_SIZE = 64 * 1024

#: One script call: its keys, its arguments, and where its caller waits for the reply.
Call = tuple[list[str], tuple, Waiter]


class Link:
    """One connection of the batcher: redis-py's, for connecting (authentication, TLS,
    Sentinel's master), then read and written directly: RESP packed by hiredis, replies
    parsed by a hiredis reader of its own. redis-py's read path (its parser's buffer and
    timeout handling, a response callback per reply) cost more than the parsing itself."""

    __slots__ = ("connection", "reader", "sock")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.reader = hiredis.Reader()
        self.sock: socket.socket = connection._sock

    def in_step(self) -> bool:
        """Nothing unread on it (no stray reply, not closed by Redis): the kernel's zero-timeout poll."""
        return not readable_now(self.sock)

    def send(self, packed: bytes) -> None:
        try:
            send_all(self.sock, packed)
        except OSError as exc:
            raise _redis_error(exc) from exc

    def replies(self, count: int) -> list[Any]:
        """The next ``count`` replies, an error reply as its redis-py exception (not raised)."""
        replies: list[Any] = []
        while len(replies) < count:
            reply = self.reader.gets()
            if reply is False:
                self._read_more()
            elif isinstance(reply, hiredis.ReplyError):
                replies.append(BaseParser.parse_error(str(reply)))
            else:
                replies.append(reply)
        return replies

    def _read_more(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except OSError as exc:
            raise _redis_error(exc) from exc
        if not data:
            raise redis.exceptions.ConnectionError("Redis closed the connection")
        self.reader.feed(data)

    def close(self) -> None:
        self.connection.disconnect()


def _redis_error(exc: OSError) -> redis.exceptions.RedisError:
    """What redis-py would have raised: the store translates redis-py's errors."""
    if isinstance(exc, TimeoutError):
        return redis.exceptions.TimeoutError("Timeout reading from Redis")
    return redis.exceptions.ConnectionError(f"Error talking to Redis: {exc}")


class ScriptBatcher:
    """Sends one Lua script's concurrent calls as pipelined batches, one batch per loop turn.

    The batcher keeps its own few connections (made with the client pool's class and
    settings, so they reach the same server, Sentinel's master included) instead of
    borrowing the pool's: the pool's checkout polls each connection through gevent's
    ``select`` (a timer and a hub switch per batch) and records statistics. Here an idle
    connection is checked with the kernel's zero-timeout poll: one that is readable
    (closed by Redis, or out of step) is closed, never used.
    """

    def __init__(self, client: redis.Redis, sha: str, source: str,
                 spawn: Callable[[Callable[[], None]], Any] = gevent.spawn,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.client = client
        self.sha = sha
        self.source = source
        self._spawn = spawn
        self._hub = get_hub()
        self._pending: list[Call] = []
        self._slots = BoundedSemaphore(max_connections)
        self._idle: list[Link] = []
        #: Batches sent and calls carried, for the benchmark's notes (calls / batches).
        self.batches = 0
        self.calls = 0

    def __call__(self, keys: list[str], args: tuple = ()) -> Any:
        """The script's reply for these keys and arguments; raises what redis-py raised."""
        call = (keys, args, Waiter(self._hub))
        self._pending.append(call)
        if len(self._pending) == 1:  # the first of its turn: it sends the batch
            self._lead(call)
        return call[2].get()

    def close(self) -> None:
        for link in self._idle:
            link.close()
        self._idle.clear()

    def _lead(self, own: Call) -> None:
        """Once a connection is free and the turn's other greenlets had their go, send
        what is pending. A leader stopped before it took the batch (its greenlet killed)
        withdraws its own call and leaves the others to a greenlet of their own: nobody
        else would send them."""
        taken = False
        try:
            with self._slots:
                gevent.sleep(0)
                taken = True
                self._send_pending()
        finally:
            if not taken:
                self._pending = [call for call in self._pending if call is not own]
                if self._pending:
                    self._spawn(self._flush)

    def _flush(self) -> None:
        with self._slots:
            self._send_pending()

    def _send_pending(self) -> None:
        """Every call pending now, in batches of at most ``MAX_BATCH``."""
        calls, self._pending = self._pending, []
        for start in range(0, len(calls), MAX_BATCH):
            self._send(calls[start:start + MAX_BATCH])

    def _send(self, batch: list[Call]) -> None:
        """One pipelined round trip for ``batch``; a second one, for the calls Redis answered
        NOSCRIPT (its script cache was flushed), once the script is loaded again. A call that
        ran is never sent twice: its counters moved already. Every call of the batch gets
        an answer, whatever happens to the greenlet sending it."""
        self.batches += 1
        self.calls += len(batch)
        replies: list[Any] = []
        try:
            replies = self._replies(batch)
        finally:
            if len(replies) != len(batch):  # interrupted (the sending greenlet was killed)
                lost = redis.exceptions.ConnectionError("the batch was interrupted")
                replies = [lost] * len(batch)
            for (_keys, _args, waiter), reply in zip(batch, replies, strict=True):
                self._deliver(waiter, reply)

    def _deliver(self, waiter: Waiter, reply: Any) -> None:
        """Hand a caller its reply: at once if it is not waiting (the sender's own call),
        else from the hub, as gevent's waiters must be woken."""
        if isinstance(reply, Exception):
            wake, value = waiter.throw, reply
        else:
            wake, value = waiter.switch, reply
        if waiter.greenlet is None:
            wake(value)
        else:
            self._hub.loop.run_callback(wake, value)

    def _replies(self, batch: list[Call]) -> list[Any]:
        try:
            replies = self._execute(batch)
        except Exception as exc:  # every waiter gets the error (a RedisError is the store's to translate)
            return [exc] * len(batch)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
        if lost:
            retry = [batch[i] for i in lost]
            try:
                self.client.script_load(self.source)
                again = self._execute(retry)
            except Exception as exc:
                again = [exc] * len(retry)
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
        return replies

    def _execute(self, batch: list[Call]) -> list[Any]:
        """The batch's replies in order, an error reply as its exception.

        A connection that failed mid-batch is closed, never kept with replies pending. A
        batch that could not be *sent* (Redis restarted since the connection was last
        used) is sent once more on a fresh one: no script ran.
        """
        packed = b"".join([hiredis.pack_command(("EVALSHA", self.sha, len(keys), *keys, *args))
                           for keys, args, _waiter in batch])
        link = self._link()
        try:
            try:
                link.send(packed)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                link.close()
                link = self._connect()
                link.send(packed)
            replies = link.replies(len(batch))
        except BaseException:
            link.close()
            raise
        self._idle.append(link)
        return replies

    def _link(self) -> Link:
        """An idle connection in step with Redis, else a new one."""
        while self._idle:
            link = self._idle.pop()
            if link.in_step():
                return link
            link.close()
        return self._connect()

    def _connect(self) -> Link:
        """A new connection, made as the pool makes them (the same server, Sentinel's master)
        but not the pool's to count, and connected by ``connect()``: a Sentinel-managed
        connection finds the master there, and only there."""
        pool = self.client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        try:
            connection.connect()
        except BaseException:
            connection.disconnect()
            raise
        return Link(connection)
