"""Limited lookups of one loop turn share one Redis round trip.

With rate limits on, every request needs Redis to decide (the counters live there), so
the route cache cannot answer for it. Instead of one EVALSHA per request, each on its own
pooled connection, requests that reach the limiter in the same turn of the worker's event
loop are sent together: one pipelined batch of EVALSHAs (not a transaction) on one
connection, written in one send and read back in order. Each request keeps its own
script call, so each is still decided atomically in Redis, with the same keys and the
same arguments as alone; only the network round trip and its greenlet switches are shared.

Nothing waits for a batch to fill: the first request of a turn schedules a flush, which
runs once the greenlets that were ready in that turn have had their go, so a lone request
is sent at once. Only when every one of the batcher's connections has a batch in flight
do requests wait, together, for the next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import redis
from gevent.event import AsyncResult
from gevent.lock import BoundedSemaphore

from cjs_proxy.pipeline.sockets import readable_now

#: Most script calls sent in one batch (a larger turn is split): bounds the reply that one
#: connection must read before any request of the batch goes on.
MAX_BATCH = 64
#: Batches in flight at once, each on its own connection. Requests that arrive while
#: every connection is busy wait together and leave in the next batch.
MAX_CONNECTIONS = 8


class ScriptBatcher:
    """Sends one Lua script's concurrent calls as pipelined batches, one batch per loop turn.

    The batcher keeps its own few connections (made with the client pool's class and
    settings, so they reach the same server, Sentinel's master included) instead of
    borrowing the pool's: the
    pool's checkout polls each connection through gevent's ``select`` (a timer and a hub
    switch per batch) and records statistics. Here an idle connection is checked with the
    kernel's zero-timeout poll: one that is readable (closed by Redis, or out of step) is
    closed, never used.
    """

    def __init__(self, client: redis.Redis, sha: str, source: str,
                 spawn: Callable[[Callable[[], None]], Any] = gevent.spawn,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.client = client
        self.sha = sha
        self.source = source
        self._spawn = spawn
        self._pending: list[tuple[list[str], tuple, AsyncResult]] = []
        self._slots = BoundedSemaphore(max_connections)
        self._idle: list[Any] = []
        #: Batches sent and calls carried, for the benchmark's notes (calls / batches).
        self.batches = 0
        self.calls = 0

    def __call__(self, keys: list[str], args: tuple = ()) -> Any:
        """The script's reply for these keys and arguments; raises what redis-py raised."""
        waiter = AsyncResult()
        if not self._pending:
            self._spawn(self._flush)
        self._pending.append((keys, args, waiter))
        return waiter.get()

    def close(self) -> None:
        for connection in self._idle:
            connection.disconnect()
        self._idle.clear()

    def _flush(self) -> None:
        with self._slots:  # the calls pending once a connection is free, not before
            pending, self._pending = self._pending, []
            for start in range(0, len(pending), MAX_BATCH):
                self._send(pending[start:start + MAX_BATCH])

    def _send(self, batch: list[tuple[list[str], tuple, AsyncResult]]) -> None:
        """One pipelined round trip for ``batch``; a second one, for the calls Redis answered
        NOSCRIPT (its script cache was flushed), once the script is loaded again. A call that
        ran is never sent twice: its counters moved already."""
        self.batches += 1
        self.calls += len(batch)
        try:
            replies = self._execute(batch)
        except Exception as exc:  # every waiter gets the error (a RedisError is the store's to translate)
            replies = [exc] * len(batch)
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
        for (_keys, _args, waiter), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                waiter.set_exception(reply)
            else:
                waiter.set(reply)

    def _execute(self, batch: list[tuple[list[str], tuple, AsyncResult]]) -> list[Any]:
        """The batch's replies in order, an error reply as its exception.

        Written on the connection directly rather than through redis-py's ``Pipeline``,
        whose bookkeeping (retries, response callbacks, its own command stack) cost more
        than the round trip it saves here. A connection that failed mid-batch is closed,
        never kept with replies pending. A batch that could not be *sent* (Redis restarted
        since the connection was last used) is sent once more on a fresh one: no script ran.
        """
        commands = [("EVALSHA", self.sha, len(keys), *keys, *args) for keys, args, _waiter in batch]
        connection = self._connection()
        try:
            try:
                connection.send_packed_command(connection.pack_commands(commands))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                connection.disconnect()
                connection.connect()
                connection.send_packed_command(connection.pack_commands(commands))
            replies = [self._reply(connection) for _ in commands]
        except BaseException:
            connection.disconnect()
            raise
        self._idle.append(connection)
        return replies

    def _connection(self) -> Any:
        """An idle connection in step with Redis, else a new one, connected.

        Connected here, by ``connect()``: a Sentinel-managed connection finds the master
        there, and only there (``send_packed_command`` would connect to its defaults).
        """
        if self._idle:
            connection = self._idle.pop()
            sock = getattr(connection, "_sock", None)
            if sock is not None and not readable_now(sock):
                return connection
            connection.disconnect()
        else:  # made as the pool makes them (the same server, Sentinel's master), but not its to count
            pool = self.client.connection_pool
            connection = pool.connection_class(**pool.connection_kwargs)
        try:
            connection.connect()
        except BaseException:
            connection.disconnect()
            raise
        return connection

    @staticmethod
    def _reply(connection: Any) -> Any:
        try:
            return connection.read_response()
        except redis.exceptions.ResponseError as exc:  # one script's error: the connection stays in step
            return exc
