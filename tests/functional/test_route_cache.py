"""The route cache against real Redis and the real proxy: a change drops only the routes read from it.

Route lookups that reach Redis are counted with ``INFO commandstats`` (every lookup is
one EVALSHA; a proxy without rate limits makes no other), minus the registrations the
test itself makes through their script.
"""

from __future__ import annotations

import time

import gevent
import pytest
import redis
import requests

from cjs_proxy.admin.store import AdminStore
from cjs_proxy.pipeline.invalidation import InvalidationFeed
from tests.harness import ANSWER_TIMEOUT, RedisServer, Renewals, evalsha_calls, wait_for

#: Registrations on other hosts, each renewed every ``PERIOD`` seconds (faster than a registrar of ``TTL`` would).
REGISTRATIONS = 50
PERIOD = 0.3
TTL = 3



def served_by(proxy, host: str) -> str:
    response = requests.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=ANSWER_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["server"]


@pytest.fixture()
def renewals(redis_server: RedisServer, rdb: redis.Redis, backends):
    store = AdminStore.from_urls(redis_server.url, redis_server.url, 5, max_connections=2)
    started = Renewals(store, rdb, backends[2].url, [f"registered-{i}.other.test" for i in range(REGISTRATIONS)],
                       TTL, PERIOD, limit=60.0)
    yield started
    started.stop()
    store.reader.close()


def cached(proxy, rdb: redis.Redis, host: str, lookups=None) -> bool:
    """Whether a request to ``host`` was answered without a route lookup in Redis."""
    count = lookups or (lambda: evalsha_calls(rdb))
    before = count()
    served_by(proxy, host)
    return count() == before


def test_renewals_of_other_hosts_leave_a_static_host_cached(make_proxy, backends, rdb, host, renewals):
    rdb.rpush(f"frontend:{host}", "static", backends[0].url)
    proxy = make_proxy()  # one worker: its cache is the one every request meets
    wait_for(lambda: cached(proxy, rdb, host, renewals.lookups), "the static host's route cached")
    renewals.start()
    before, renewed = renewals.lookups(), renewals.calls
    started, sent = time.monotonic(), 0
    while sent < 100 or time.monotonic() - started < 3 * PERIOD:  # requests through three renewal rounds
        assert served_by(proxy, host) == "a"
        sent += 1
        assert sent < 2000
    assert renewals.calls - renewed >= REGISTRATIONS  # every other host was renewed meanwhile
    assert renewals.lookups() - before == 0, f"{sent} requests"

    rdb.lset(f"frontend:{host}", 1, backends[1].url)  # its own frontend changes: seen at once
    wait_for(lambda: served_by(proxy, host) == "b", "the changed frontend served", timeout=2)


def test_a_dead_mark_on_one_host_leaves_another_hosts_route_cached(make_proxy, backends, rdb, host):
    marked, other = f"marked-{host}", f"other-{host}"
    for name in (marked, other):
        rdb.rpush(f"frontend:{name}", name, backends[0].url, backends[1].url)
    proxy = make_proxy()
    for name in (marked, other):
        wait_for(lambda name=name: cached(proxy, rdb, name), f"{name} cached")
    rdb.sadd(f"dead:{marked}", 1)
    # The mark reaches the worker: its own route is looked up again (only then is the check below fair).
    wait_for(lambda: not cached(proxy, rdb, marked), "the marked host looked up again")
    before = evalsha_calls(rdb)
    for _ in range(20):
        served_by(proxy, other)
    assert evalsha_calls(rdb) == before


def test_a_wildcard_frontend_change_drops_the_hosts_it_serves(make_proxy, backends, rdb, host):
    wildcard, served = f"*.{host}", f"a.{host}"
    rdb.rpush(f"frontend:{wildcard}", "wild", backends[0].url)
    proxy = make_proxy()
    wait_for(lambda: cached(proxy, rdb, served), "the wildcard's host cached")
    assert served_by(proxy, served) == "a"
    rdb.lset(f"frontend:{wildcard}", 1, backends[1].url)
    wait_for(lambda: served_by(proxy, served) == "b", "the wildcard's change served", timeout=2)


def test_the_feed_names_the_keys_redis_announces(redis_server: RedisServer, rdb: redis.Redis):
    """Against the real Redis: keys without the driver's prefix; a flush, and a (re)connection, as everything."""
    feed = InvalidationFeed(f"{redis_server.url}#pre:", timeout=5)
    answers: list[object] = []

    def next_answer() -> object:
        gevent.sleep(0.01)  # lets the feed's connecting greenlet run
        answers.append(feed.changed())
        return answers[-1]

    def keys_heard() -> set[str]:
        return {key for answer in answers if isinstance(answer, list) for key in answer}

    try:
        wait_for(lambda: next_answer() is not None and feed.connected, "the feed connected")
        assert answers[-1] is True  # just connected: whatever was read before may be stale
        assert feed.changed() is False
        del answers[:]
        with rdb.pipeline(transaction=True) as pipe:
            pipe.rpush("pre:frontend:x.test", "app").sadd("pre:dead:x.test", 0).rpush("frontend:unprefixed", "a")
            pipe.execute()
        wait_for(lambda: next_answer() is not None and keys_heard() >= {"frontend:x.test", "dead:x.test"},
                 "the keys announced")
        assert keys_heard() == {"frontend:x.test", "dead:x.test"} and True not in answers
        rdb.flushall()
        wait_for(lambda: next_answer() is True, "the flush announced")
    finally:
        feed.close()
