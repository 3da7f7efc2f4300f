"""The slow-transfer share of a pool: lanes first, a cut only when a request waits for the pool."""

from __future__ import annotations

import socket

from cjs_proxy.pipeline.slow_clients import PoolShare, SlowClients, lanes_for


class Recorder(SlowClients):
    def __init__(self) -> None:
        super().__init__()
        self.cut: list[object] = []

    def shed(self, watch) -> None:  # type: ignore[override]
        self.cut.append(watch)


def stalled(owner: SlowClients, share: PoolShare):
    watch = owner.watch(share, socket.socket(), "http://b")
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
