"""The slow-transfer share of a pool: lanes first, a cut only when a request waits for the pool."""

from __future__ import annotations

import socket

from cjs_proxy.pipeline.slow_clients import PoolShare, SlowClients, lanes_for


class Recorder(SlowClients):
    def __init__(self) -> None:
        super().__init__()
        self.cut: list[object] = []

    def shed(self, watch) -> None:  # type: ignore[override]
        self.active.discard(watch)
        self.cut.append(watch)


def stalled(owner: SlowClients, share: PoolShare, address: str | None = None):
    watch = owner.watch(share, socket.socket(), "http://b", address=address)
    watch.begin()
    watch.tick()  # the sweep that sees it waiting
    watch.tick()  # a whole interval later, no progress
    return watch


def test_a_tenth_of_the_pool_is_kept_back():
    assert [lanes_for(n) for n in (1, 2, 4, 10, 100)] == [0, 1, 3, 9, 90]


def test_a_stalled_transfer_takes_a_lane_and_gives_it_back():
    owner, share = Recorder(), PoolShare(4)
    watch = stalled(owner, share)
    assert (watch.lane, share.slow, owner.cut) == (True, 1, [])
    watch.close()
    assert share.slow == 0


def test_no_lane_left_is_cut_only_when_a_request_waits():
    owner, share = Recorder(), PoolShare(1)
    watch = stalled(owner, share)
    assert owner.cut == []
    share.waiting = 1
    watch.tick()
    assert owner.cut == [watch]


def test_a_transfer_making_progress_is_not_slow():
    owner, share = Recorder(), PoolShare(1)
    share.waiting = 1
    watch = owner.watch(share, socket.socket(), "http://b")
    for _ in range(5):
        watch.begin()
        watch.tick()
        watch.end()
    assert owner.cut == [] and not watch.lane


def test_a_request_about_to_wait_gets_a_laneless_slow_transfer_cut_at_once():
    """Not at the next sweep: the request would otherwise wait up to a whole interval."""
    owner, share, other = Recorder(), PoolShare(1), PoolShare(1)
    fast = owner.watch(share, socket.socket(), "http://b")
    fast.begin()  # waiting on its client, but never found slow
    elsewhere = stalled(owner, other)
    assert owner.relieve(share) is False and owner.cut == []
    slow = stalled(owner, share)  # found slow, no lane (a pool of 1 has none), nobody waited then
    assert slow.laneless and owner.cut == []
    assert owner.relieve(share) is True
    assert owner.cut == [slow]
    assert elsewhere not in owner.cut and fast not in owner.cut


def test_a_laneless_transfer_that_is_not_waiting_on_its_client_is_left_alone():
    owner, share = Recorder(), PoolShare(1)
    slow = stalled(owner, share)
    slow.end()  # the client took the piece: it is moving again
    assert owner.relieve(share) is False and owner.cut == []


def test_relieve_cuts_another_addresss_transfer_before_the_waiters_own():
    """The waiting request's own address's slow transfer goes last: the others' go first."""
    owner, share = Recorder(), PoolShare(1)
    own = stalled(owner, share, address="10.0.0.1")
    other = stalled(owner, share, address="10.0.0.2")
    assert owner.relieve(share, "10.0.0.1") is True and owner.cut == [other]
    assert owner.relieve(share, "10.0.0.1") is True and owner.cut == [other, own]  # then its own
    assert owner.relieve(share, "10.0.0.1") is False


def test_one_address_alone_is_relieved_as_before():
    """Every client behind one address (a load balancer, loopback): its own transfers are cut for it."""
    owner, share = Recorder(), PoolShare(1)
    slow = stalled(owner, share, address="10.0.0.1")
    share.waiting += 1  # a request of the same address waits for the pool
    slow.tick()
    assert owner.cut == [slow]


def test_a_slow_answer_is_spooled_rather_than_cut():
    owner, share = Recorder(), PoolShare(1)
    watch = owner.watch(share, socket.socket(), "http://b")
    spooled = []
    watch.spool = lambda: spooled.append(True) or True
    relay = watch.relay(iter([b"piece"]))
    next(relay)  # the client now takes this piece: the exchange waits on it
    share.waiting += 1  # and a request wants the pool
    watch.tick()
    watch.tick()
    assert spooled == [True] and owner.cut == [] and watch.spooled and not watch.laneless
    assert owner.relieve(share) is False  # nothing left to cut: its connection is on its way back


def test_a_slow_upload_is_not_spooled():
    """Only an answer can be spooled; a request body that stalls keeps the old rules."""
    owner, share = Recorder(), PoolShare(1)
    watch = owner.watch(share, socket.socket(), "http://b")
    watch.spool = lambda: True
    watch.begin()  # waiting for the client's next body piece
    share.waiting += 1
    watch.tick()
    watch.tick()
    assert not watch.spooled and owner.cut == [watch]
