"""Each client address's share of a backend pool: the counting, the rule and the wait."""

from __future__ import annotations

import time

import gevent

from cjs_proxy.pipeline.fair_share import OTHERS_RECENT, FairShare, reserve_for, share_for


def test_the_default_share_is_half_the_pool_and_at_least_one():
    assert [share_for(n) for n in (1, 2, 3, 10, 100)] == [1, 1, 1, 5, 50]
    assert share_for(100, 7) == 7


def test_the_reserve_is_a_tenth_and_at_least_one():
    assert [reserve_for(n) for n in (1, 9, 10, 100)] == [1, 1, 1, 10]


def test_under_its_share_an_address_takes_even_the_last_connection():
    fair = FairShare(10, 3)
    fair.take("a")
    fair.take("a")
    assert fair.may_take("a", free=1)


def test_past_its_share_an_address_takes_only_while_the_reserve_stays_free():
    fair = FairShare(10, 3)
    fair.take("b")  # another address uses the pool
    for _ in range(3):
        fair.take("a")
    assert fair.may_take("a", free=6)  # work-conserving: an idle pool is used
    assert fair.may_take("a", free=2)  # one left free after it
    assert not fair.may_take("a", free=1)  # that one is the reserve
    assert fair.may_take("b", free=1)  # another address is not held back


def test_a_request_of_no_known_address_is_never_held_back():
    fair = FairShare(1)
    fair.take(None)
    assert fair.may_take(None, free=0) and fair.held == {}


def test_counts_go_back_to_zero_and_the_address_is_forgotten():
    fair = FairShare(10, 3)
    holdings = [fair.take("a"), fair.take("a"), fair.take("b")]
    assert fair.held == {"a": 2, "b": 1}
    for holding in holdings:
        holding.release()
    assert fair.held == {}


def test_a_holding_is_given_back_exactly_once_and_its_follow_up_runs_once():
    fair = FairShare(10, 3)
    calls = []
    first = fair.take("a", then=lambda: calls.append("lane"))
    fair.take("a")
    first.release()
    first.release()
    assert fair.held == {"a": 1} and calls == ["lane"]


def test_a_wait_past_the_share_ends_with_the_timeout():
    fair = FairShare(10, 1)
    fair.take("b")
    fair.take("a")
    started = time.monotonic()
    assert fair.wait_turn("a", lambda: 1, timeout=0.2) is False
    assert time.monotonic() - started >= 0.19


def test_a_wait_ends_when_one_of_the_addresses_exchanges_ends():
    fair = FairShare(10, 1)
    fair.take("b")
    holding = fair.take("a")
    gevent.spawn_later(0.05, holding.release)
    started = time.monotonic()
    assert fair.wait_turn("a", lambda: 1, timeout=5) is True
    assert time.monotonic() - started < 2


def test_a_wait_looks_again_when_another_exchange_frees_the_pool():
    fair = FairShare(10, 1)
    fair.take("a")
    other = fair.take("b")
    free = [1]

    def end_other() -> None:
        free[0] = 2  # b's connection is back in the pool
        other.release()

    gevent.spawn_later(0.05, end_other)
    assert fair.wait_turn("a", lambda: free[0], timeout=5) is True
    assert fair.held == {"a": 1}


def test_every_waiter_is_woken_by_one_exchange_ending():
    fair = FairShare(10, 1)
    first, _second = fair.take("a"), fair.take("b")
    waiters = [gevent.spawn(fair.wait_turn, address, lambda: 1, 5) for address in ("a", "a", "b")]
    gevent.sleep(0.05)
    first.release()  # a is under its share again; b is not
    gevent.joinall(waiters[:2], timeout=2)
    assert [w.value for w in waiters[:2]] == [True, True]
    assert not waiters[2].ready()
    waiters[2].kill()


def test_an_address_alone_on_its_pool_is_never_held_back():
    """Every client behind one load balancer: the reserve is for other addresses, and there are none."""
    fair = FairShare(10, 3)
    for _ in range(9):
        fair.take("lb")
    assert fair.may_take("lb", free=1)


def test_the_reserve_is_kept_only_while_another_address_used_the_pool_lately():
    now = [0.0]
    fair = FairShare(10, 3, clock=lambda: now[0])
    fair.take("normal").release()
    for _ in range(9):
        fair.take("attacker")
    assert not fair.may_take("attacker", free=1)  # kept for "normal", which came 0 s ago
    now[0] = OTHERS_RECENT + 1
    assert fair.may_take("attacker", free=1)  # nobody else for a while: the whole pool
    fair.take("normal")
    assert not fair.may_take("attacker", free=1)


def test_the_other_addresses_are_known_whatever_order_they_came_in():
    now = [0.0]
    fair = FairShare(10, 1, clock=lambda: now[0])
    fair.take("a")
    now[0] = 5.0
    fair.take("b")
    now[0] = 12.0
    fair.take("a")
    assert fair.others_recently("a")  # b, 7 s ago
    assert fair.others_recently("b")  # a, just now
    now[0] = 16.0
    assert not fair.others_recently("a")  # b, 11 s ago
    fair.take("c")
    assert fair.others_recently("a") and fair.others_recently("c")
