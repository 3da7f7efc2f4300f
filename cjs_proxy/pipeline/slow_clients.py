"""Slow clients cannot starve other clients of a backend.

A pooled backend connection is held for as long as its exchange lasts; the clients set
that pace. 150 POSTs sending one body byte every 5 s, or 120 clients that never read a
4 MiB answer, used to hold all of ``server.maxSockets`` connections while everyone else
of that app waited 30 s for a 503. Two rules keep a share of every pool for the others:

- **No connection before there is something to send.** Up to ``PREREAD_BYTES`` of a
  request body are read before a connection is taken (``RequestBody.preread``): a small
  body is sent whole however slowly it came (and can be sent again on a retry). A larger
  one is a streaming upload, slow by nature: it takes a connection only once 64 KiB of
  it have arrived *and* it has one of the pool's slow lanes (below), waiting up to the
  pool's timeout for one (then 503), so uploads never take the share kept for the others.
- **Slow transfers have a bounded share of the pool.** While an exchange holds a pooled
  connection, each of its waits on the client (the next body piece; the client taking
  the last answer piece) is watched. A wait that outlasts ``SLOW_AFTER`` makes the
  transfer slow: it takes one of the pool's slow lanes (``lanes_for``: all connections
  but a tenth, at least one kept back) and keeps it until it ends. While a request waits
  for the pool, an answer whose client's send buffer is full is slow at once. A slow transfer that
  finds no lane free goes on while nobody needs the pool; once a request is waiting for
  one of the pool's connections, it is cut (client connection reset, backend connection
  closed, never pooled) so that the request gets it: at once when the request arrives
  (``relieve``, which cuts another address's transfer before one of the waiting
  request's own), not at the next sweep, which left it waiting up to ``SLOW_AFTER``.
  (``fair_share`` holds back an address past its share before it waits on the pool, so
  the attackers of the abuse benchmark, on an address of their own, do not cut one
  another's transfers to take the connections kept for others.)

The trade-off: when slow transfers already hold their whole share and the pool is
full, the slowest further ones are cut rather than queued, legitimate slow downloads
among them. Under no pressure nothing is ever cut. The watches are swept by one
greenlet per worker every ``SLOW_AFTER`` seconds: no timer per request.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import gevent
from gevent.lock import Semaphore

from cjs_proxy.eventlog import EventLog
from cjs_proxy.pipeline.sockets import reset_on_close, writable_now

log = logging.getLogger("cjs_proxy.pipeline.slow_clients")

#: Bytes of a request body read before a pooled connection is taken for it.
PREREAD_BYTES = 64 * 1024
#: Seconds a transfer may wait on its client, holding a pooled connection, before it is slow.
SLOW_AFTER = 0.1


def lanes_for(pool_size: int) -> int:
    """How many of a pool's connections slow transfers may hold: all but a tenth (at least one)."""
    return max(0, pool_size - max(1, pool_size // 10))


class PoolShare:
    """One backend pool's budget of slow transfers, and how many requests wait for a connection."""

    __slots__ = ("_free", "lanes", "waiting")

    def __init__(self, pool_size: int) -> None:
        self.lanes = lanes_for(pool_size)
        self._free = Semaphore(self.lanes)
        #: Checkouts in progress; above zero while the sweeper runs, someone is blocked on the pool.
        self.waiting = 0

    @property
    def slow(self) -> int:
        return self.lanes - self._free.counter

    def take_lane(self, timeout: float | None = None) -> bool:
        """A lane now (``timeout`` None), or within ``timeout`` seconds; False if none came."""
        if timeout is None:
            return self._free.acquire(blocking=False)
        return self._free.acquire(timeout=timeout)

    def give_back_lane(self) -> None:
        self._free.release()


class ClientWatch:
    """The waits on one client of an exchange that holds a pooled connection."""

    __slots__ = ("address", "backend_url", "client", "lane", "laneless", "owner", "progress", "relaying", "seen",
                 "share", "spool", "spooled", "waiting")

    def __init__(self, owner: SlowClients, share: PoolShare, client: socket.socket, backend_url: str,
                 address: str | None = None) -> None:
        self.owner = owner
        self.share = share
        self.client = client
        self.backend_url = backend_url
        #: The client's address (``headers.client_address``): requests of its own never cut it.
        self.address = address
        self.waiting = False
        self.progress = 0
        self.seen = -1
        self.lane = False
        #: Found slow with no lane free: it holds a connection kept for the others.
        self.laneless = False
        #: Relaying the answer (not reading the request body): what is left of it may be spooled.
        self.relaying = False
        #: Spools the rest of the answer and gives the connection back (``spool``); False if it cannot.
        self.spool: Callable[[], bool] | None = None
        #: The rest of the answer is spooled: the connection is (being) given back.
        self.spooled = False

    def begin(self) -> None:
        """The exchange now waits on its client."""
        self.waiting = True

    def end(self) -> None:
        self.waiting = False
        self.progress += 1

    def relay(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The answer's pieces; the time the server spends handing each to the client is watched.

        While a request waits for the pool, a client whose send buffer is full before the
        next piece is slow at once: it does not keep a connection for a whole sweep.
        """
        self.relaying = True
        for chunk in chunks:
            if self.share.waiting and not self.lane and not self.spooled and not writable_now(self.client):
                self.slow_now()
            self.begin()
            yield chunk
            self.end()

    def slow_now(self) -> None:
        """Slow: the rest of its answer spooled if it can be, else a lane if one is free, else
        (the pool being wanted) cut."""
        if self.spool_rest():
            return
        if self.share.take_lane():
            self.lane, self.laneless = True, False
        elif self.share.waiting:
            self.owner.shed(self)
        else:
            self.laneless = True

    def tick(self) -> None:
        """One sweep: a wait that made no progress over a whole ``SLOW_AFTER`` makes the transfer slow."""
        if not self.waiting or self.progress != self.seen:
            self.seen = self.progress
            return
        if not self.lane:
            self.slow_now()
        else:
            self.spool_rest()  # gives its lane back too, once the answer is spooled

    def spool_rest(self) -> bool:
        """Spool what is left of the answer (``spool``), so that the connection goes back to its
        pool while the client takes its time. True once it is spooled."""
        if not self.spooled and self.relaying and self.spool is not None and self.spool():
            self.spooled, self.laneless = True, False
        return self.spooled

    def close(self) -> None:
        """The exchange is over: its lane back, out of the sweep."""
        self.owner.active.discard(self)
        if self.lane:
            self.lane = False
            self.share.give_back_lane()


class SlowClients:
    """A worker's watches, swept by one greenlet (started with the first watch)."""

    def __init__(self, interval: float = SLOW_AFTER) -> None:
        self.interval = interval
        self.active: set[ClientWatch] = set()
        self.events = EventLog(log)
        self._sweeper: gevent.Greenlet | None = None

    def watch(self, share: PoolShare, client: socket.socket, backend_url: str, lane: bool = False,
              address: str | None = None) -> ClientWatch:
        """Watch a transfer of ``address`` that now holds a connection (``lane``: it took a slow lane already)."""
        if self._sweeper is None or self._sweeper.dead:
            self._sweeper = gevent.spawn(self._sweep)
        watch = ClientWatch(self, share, client, backend_url, address)
        watch.lane = lane
        self.active.add(watch)
        return watch

    def _sweep(self) -> None:
        while True:
            gevent.sleep(self.interval)
            for watch in list(self.active):
                watch.tick()

    def relieve(self, share: PoolShare, address: str | None = None) -> bool:
        """A request of ``address`` is about to wait for ``share``'s pool: cut one transfer already
        found slow with no lane free, now, another address's if there is one. True when one
        was cut (its connection comes free shortly)."""
        for watch in self.active:  # an answer waiting on its client can be spooled: no cut needed
            if watch.share is share and watch.waiting and watch.relaying and not watch.spooled:
                if watch.spool_rest():
                    return True
        own = None
        for watch in self.active:
            if watch.share is share and watch.laneless and not watch.lane and watch.waiting:
                if address is None or watch.address != address:
                    self.shed(watch)
                    return True
                own = own or watch
        if own is not None:
            self.shed(own)
            return True
        return False

    def shed(self, watch: ClientWatch) -> None:
        """Cut a slow transfer beyond its pool's share: the request waiting gets its connection."""
        self.active.discard(watch)
        self.events.record(f"shed:{watch.backend_url}",
                           f"{watch.backend_url}: a client too slow to keep a connection was cut "
                           f"({watch.share.slow} of {watch.share.lanes} slow lanes taken, "
                           f"{watch.share.waiting} requests waiting)")
        reset(watch.client)


def reset(client: socket.socket) -> None:
    """Reset the client connection under whatever waits on it, without closing its descriptor.

    ``SO_LINGER`` 0 turns the eventual close into an RST (a cut answer is never taken for a
    whole one), and ``shutdown`` wakes the greenlet blocked on it with an error; the
    owner then closes it. Plain system calls on the descriptor: TLS state is left alone.
    """
    try:
        alias = socket.socket(fileno=client.fileno())
    except (OSError, ValueError):
        return  # already closed
    try:
        reset_on_close(alias)
        alias.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the peer is gone already: nothing left to wake
    finally:
        alias.detach()
