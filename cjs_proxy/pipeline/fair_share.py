"""One client address cannot take the share of a backend pool kept for everyone else.

``slow_clients`` bounds what *slow* transfers may hold of a pool, but it cannot tell one
client from another: in the abuse benchmark (``bench/abuse.py``, ``bench/NOTES.md``,
"Where the abuse p99 comes from") 100 clients that never read a 4 MiB answer reconnect as
soon as they are cut and take the freed connections, the tenth kept for the others among
them, before a normal client's request: its p99 was 118 ms against a 1.8 ms baseline
(29.7 ms with ``server.maxSockets: 1000``, i.e. without pool pressure). Their request
heads look like anyone's; their address does not. So each pool also counts what every
client address holds of it:

- An address holding fewer than its share (``server.maxSocketsPerClient``; by default
  half the pool) takes a connection as it always did.
- An address holding its share or more takes one more only while the pool would still
  keep ``reserve_for`` (a tenth, at least one: the tenth ``slow_clients`` keeps) of its
  connections free or not yet opened. Otherwise its request waits, up to the pool's
  timeout, until one of the pool's exchanges ends and the rule lets it through (then 503).
- The rule holds when the connection is taken, not only when the request arrives: requests
  an address queued on a full pool while under its share would otherwise all get
  connections as they free up, past its share and into the reserve
  (``Upstream._checkout`` puts such a connection back and waits for its turn).

The reserve is kept only for others that exist: an address past its share is held back
only while another address used the pool within the last ``OTHERS_RECENT`` seconds. A
pool used by one address alone (every client behind one load balancer that is not in
``server.trustedProxies``; a test on loopback) is used whole, exactly as without this
rule, and ``slow_clients`` alone decides what slow transfers may hold.
The trade-off: clients behind one NAT (or one forward proxy not in
``server.trustedProxies``) share one address's share, but only while the pool is
contended by other addresses. The address is the rate limiter's (``headers.client_address``). Counts live in
one small dict per pool, an address removed at zero, so memory is bounded by the
exchanges in flight; waiting uses one ``gevent.event.Event`` per pool and wave of waiters,
set when any exchange of the pool ends: no polling, no cost when nobody waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gevent.event import Event

#: Seconds after another address last took one of a pool's connections during which the
#: reserve is kept from an address past its share. Long beside a normal client's pauses
#: between requests, short beside how long a deployment's address mix lasts.
OTHERS_RECENT = 10.0


def reserve_for(pool_size: int) -> int:
    """Connections of a pool an address past its share may not take: a tenth, at least one."""
    return max(1, pool_size // 10)


def share_for(pool_size: int, per_client: int = 0) -> int:
    """An address's share of a pool: ``per_client`` (``server.maxSocketsPerClient``), or for 0
    half the pool, rounded down, at least one."""
    return per_client if per_client > 0 else max(1, pool_size // 2)


class Holding:
    """One pooled exchange counted against its address; ``release`` gives it back exactly once."""

    __slots__ = ("address", "fair", "then")

    def __init__(self, fair: FairShare, address: str | None, then: Callable[[], None] | None = None) -> None:
        self.fair: FairShare | None = fair
        self.address = address
        #: Whatever else the exchange gives back when its connection is gone (its slow lane).
        self.then = then

    def release(self) -> None:
        """The exchange's connection is back in its pool or closed (idempotent)."""
        fair, self.fair = self.fair, None
        if fair is None:
            return
        then, self.then = self.then, None
        try:
            if then is not None:
                then()
        finally:
            fair.give_back(self.address)


class FairShare:
    """One pool's connections held by client address, and the wait of addresses past their share."""

    __slots__ = ("_recent", "_turn", "clock", "held", "reserve", "share", "size")

    def __init__(self, pool_size: int, per_client: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = pool_size
        self.reserve = reserve_for(pool_size)
        self.share = share_for(pool_size, per_client)
        #: Exchanges in flight by address; an address leaves at zero (bounded by the exchanges).
        self.held: dict[str, int] = {}
        #: Set when an exchange ends, then replaced: exists only while someone waits.
        self._turn: Event | None = None
        self.clock = clock
        #: The last two distinct addresses to take a connection, newest first, with when:
        #: enough to know when any address other than a given one last did.
        self._recent: list[tuple[str, float]] = []

    def set_share(self, per_client: int) -> None:
        self.share = share_for(self.size, per_client)

    def holding(self, address: str | None) -> int:
        return 0 if address is None else self.held.get(address, 0)

    def may_take(self, address: str | None, free: int) -> bool:
        """Under its share, yes; at or past it, only if ``reserve`` of the ``free`` connections
        (idle or unopened) would still be left, or if no other address used the pool lately.
        A request of no known address is not counted."""
        if self.holding(address) < self.share or free - 1 >= self.reserve:
            return True
        return not self.others_recently(address)

    def others_recently(self, address: str | None) -> bool:
        """Whether an address other than ``address`` took a connection in the last ``OTHERS_RECENT`` s."""
        for other, when in self._recent:
            if other != address:
                return self.clock() - when <= OTHERS_RECENT
        return False

    def wait_turn(self, address: str | None, free: Callable[[], int], timeout: float) -> bool:
        """Wait until ``may_take`` (re-checked each time an exchange of the pool ends), at most
        ``timeout`` seconds; False if it never came."""
        deadline = time.monotonic() + timeout
        while not self.may_take(address, free()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._turn is None:
                self._turn = Event()
            self._turn.wait(remaining)
        return True

    def take(self, address: str | None, then: Callable[[], None] | None = None) -> Holding:
        """Count a connection just checked out for ``address``; the ``Holding`` gives it back."""
        if address is not None:
            self.held[address] = self.held.get(address, 0) + 1
            self._used_by(address)
        return Holding(self, address, then)

    def _used_by(self, address: str) -> None:
        now = self.clock()
        if self._recent and self._recent[0][0] == address:
            self._recent[0] = (address, now)
        else:
            self._recent = [(address, now), *(entry for entry in self._recent if entry[0] != address)][:2]

    def give_back(self, address: str | None) -> None:
        """An exchange ended: one less for its address, and every waiter looks again."""
        if address is not None:
            count = self.held.pop(address, 0) - 1
            if count > 0:
                self.held[address] = count
        self.wake()

    def wake(self) -> None:
        """The pool has a connection back: every request waiting for its turn looks again."""
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.set()
