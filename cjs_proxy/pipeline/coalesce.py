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
is sent at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import redis
from gevent.event import AsyncResult

#: Most script calls sent in one batch (a larger turn is split): bounds the reply that one
#: connection must read before any request of the batch goes on.
MAX_BATCH = 64


class ScriptBatcher:
    """Sends one Lua script's concurrent calls as pipelined batches, one batch per loop turn."""

    def __init__(self, client: redis.Redis, sha: str, source: str,
                 spawn: Callable[[Callable[[], None]], Any] = gevent.spawn) -> None:
        self.client = client
        self.sha = sha
        self.source = source
        self._spawn = spawn
        self._pending: list[tuple[list[str], tuple, AsyncResult]] = []
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

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_BATCH):
            self._send(pending[start:start + MAX_BATCH])

    def _send(self, batch: list[tuple[list[str], tuple, AsyncResult]]) -> None:
        """One pipelined round trip for ``batch``; a second one only if Redis lost the script."""
        self.batches += 1
        self.calls += len(batch)
        try:
            replies = self._execute(batch)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self.client.script_load(self.source)
                replies = self._execute(batch)
        except Exception as exc:  # every waiter gets the error (a RedisError is the store's to translate)
            for _keys, _args, waiter in batch:
                waiter.set_exception(exc)
            return
        for (_keys, _args, waiter), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                waiter.set_exception(reply)
            else:
                waiter.set(reply)

    def _execute(self, batch: list[tuple[list[str], tuple, AsyncResult]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for keys, args, _waiter in batch:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)
