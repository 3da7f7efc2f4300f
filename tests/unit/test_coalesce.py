"""Limited lookups of one loop turn share one pipelined round trip, each still its own script call.

Against the session's real redis-server: the batcher's replies must be exactly what each
call would have got alone, in order, whatever Redis answers (errors, a flushed script cache).
"""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cjs_proxy.pipeline import coalesce
from cjs_proxy.pipeline.coalesce import ScriptBatcher
from cjs_proxy.pipeline.store import RouteStore

ECHO = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"


@pytest.fixture()
def raw(rdb: redis.Redis) -> Iterator[redis.Redis]:
    """The emptied database through a client that returns bytes, as the proxy's does."""
    kwargs = rdb.connection_pool.connection_kwargs
    client = redis.Redis(host=kwargs["host"], port=kwargs["port"])
    yield client
    client.close()


def batcher(client: redis.Redis, source: str = ECHO) -> ScriptBatcher:
    return ScriptBatcher(client, client.script_load(source), source)


def concurrently(calls: list) -> list:
    """Run the calls as greenlets that all become ready in the same loop turn."""
    jobs = [gevent.spawn(call) for call in calls]
    gevent.joinall(jobs, timeout=30, raise_error=False)
    return [job.value if job.successful() else job.exception for job in jobs]


def test_calls_of_one_turn_go_in_one_batch_and_each_gets_its_own_reply(raw: redis.Redis) -> None:
    script = batcher(raw)
    replies = concurrently([lambda i=i: script([f"co:{i % 3}"], (f"arg{i}",)) for i in range(10)])
    assert (script.batches, script.calls) == (1, 10)
    for i, reply in enumerate(replies):
        assert reply[:2] == [f"co:{i % 3}".encode(), f"arg{i}".encode()]
    # Each call ran on its own, in order: the counters went up one by one.
    assert [r[2] for r in replies] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]


def test_a_lone_call_is_sent_at_once(raw: redis.Redis) -> None:
    script = batcher(raw)
    assert script(["co:lone"], ("x",)) == [b"co:lone", b"x", 1]
    assert (script.batches, script.calls) == (1, 1)


def test_calls_of_later_turns_are_later_batches(raw: redis.Redis) -> None:
    script = batcher(raw)
    for _turn in range(3):
        concurrently([lambda: script(["co:turns"], ("t",)) for _ in range(4)])
    assert (script.batches, script.calls) == (3, 12)
    assert int(raw.get("co:turns")) == 12


def test_a_large_turn_is_split(raw: redis.Redis) -> None:
    script = batcher(raw)
    n = coalesce.MAX_BATCH * 2 + 1
    replies = concurrently([lambda: script(["co:split"], ("s",)) for _ in range(n)])
    assert script.batches == 3
    assert sorted(r[2] for r in replies) == list(range(1, n + 1))


def test_a_script_error_fails_only_its_own_call(raw: redis.Redis) -> None:
    raw.set("co:string", "x")
    script = batcher(raw, "return redis.call('LRANGE', KEYS[1], 0, -1)")
    raw.rpush("co:list", "a")
    replies = concurrently([lambda: script(["co:list"]), lambda: script(["co:string"]),
                            lambda: script(["co:list"])])
    assert replies[0] == replies[2] == [b"a"]
    assert isinstance(replies[1], redis.exceptions.ResponseError)
    assert script.batches == 1


def test_a_flushed_script_cache_is_reloaded_and_the_batch_sent_again(raw: redis.Redis) -> None:
    script = batcher(raw)
    raw.script_flush()
    replies = concurrently([lambda: script(["co:reload"], ("r",)) for _ in range(3)])
    assert sorted(r[2] for r in replies) == [1, 2, 3]  # each ran once, after the reload


def test_redis_unreachable_fails_every_call_of_the_batch() -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    script = ScriptBatcher(dead, "0" * 40, ECHO)
    replies = concurrently([lambda: script(["k"]) for _ in range(3)])
    assert all(isinstance(r, redis.exceptions.ConnectionError) for r in replies)


def test_the_store_gives_the_same_limited_answers_coalesced_or_not(raw: redis.Redis) -> None:
    raw.rpush("frontend:co.example", "co", "http://127.0.0.1:1")
    limits = ("10.0.0.1", '{"tiers":{"default":{"rate":1000,"burst":1000,"enforce":true}},'
                          '"perIp":{"rate":1,"burst":5}}')
    plain, batched = RouteStore(raw, raw), RouteStore(raw, raw, coalesce=True)
    lookups = [lambda: batched.lookup(["co.example", "*"], "co.example", limits) for _ in range(8)]
    answers = concurrently(lookups)
    assert batched.batch_counts() == (1, 8)
    allowed = [answer[1][1] for answer in answers]  # the verdict's outcome: 1 allowed, 0 limited
    assert sorted(allowed, reverse=True) == [1] * 5 + [0] * 3
    # The uncoalesced store sees the same counters: this client is over its (per IP) burst now.
    assert plain.lookup(["co.example", "*"], "co.example", limits)[1][1] == 0
    # Without limits a lookup never goes through the batcher.
    assert batched.lookup(["co.example", "*"], "co.example")[0].identifier == "co"
    assert batched.batch_counts() == (1, 8)
    # A route the worker holds already: the limits alone, batched the same way.
    frontend = answers[0][0]
    verdicts = concurrently([lambda: batched.limit(frontend.key, limits) for _ in range(3)])
    assert [v[1] for v in verdicts] == [0, 0, 0] and batched.batch_counts() == (2, 11)
    assert plain.limit(frontend.key, ("10.0.0.2", limits[1]))[1] == 1  # another client: allowed



def test_a_batch_that_cannot_be_sent_on_a_stale_connection_is_sent_on_a_fresh_one(raw: redis.Redis) -> None:
    kwargs = raw.connection_pool.connection_kwargs
    client = redis.Redis(host=kwargs["host"], port=kwargs["port"], retry=Retry(NoBackoff(), 0))
    script = batcher(client)
    assert script(["co:stale"], ("a",))[2] == 1  # its connection is now idle
    raw.client_kill_filter(_type="normal", skipme=True)  # Redis restarted, as far as it can tell
    replies = concurrently([lambda: script(["co:stale"], ("b",)) for _ in range(3)])
    assert sorted(r[2] for r in replies) == [2, 3, 4]  # each ran exactly once
    client.close()


def test_a_connection_lost_mid_batch_fails_the_batch_and_is_not_reused(raw: redis.Redis) -> None:
    kwargs = raw.connection_pool.connection_kwargs
    client = redis.Redis(host=kwargs["host"], port=kwargs["port"], socket_timeout=0.5,
                         retry=Retry(NoBackoff(), 0))
    slow = batcher(client, "redis.call('INCR', KEYS[1]); local t = redis.call('TIME'); "
                           "while redis.call('TIME')[1] - t[1] < 1 do end; return 1")
    replies = concurrently([lambda: slow(["co:slow"]) for _ in range(2)])
    assert all(isinstance(r, redis.exceptions.TimeoutError) for r in replies)
    assert not slow._idle  # closed, not kept with a reply pending
    raw.ping()  # waits for the slow script to end
    fast = batcher(client)
    assert fast(["co:after"], ("x",))[2] == 1  # a fresh connection, in step
    client.close()



def test_only_the_calls_redis_answered_noscript_are_sent_again(raw: redis.Redis) -> None:
    """A script cache flushed between two calls of one batch: the calls that ran are not run twice."""

    class Partly(ScriptBatcher):
        sent: list[list[str]] = []

        def _execute(self, batch):  # type: ignore[no-untyped-def]
            self.sent.append([keys[0] for keys, _args, _waiter in batch])
            if len(self.sent) == 1:
                return [b"ran", redis.exceptions.NoScriptError("NOSCRIPT"), b"ran"]
            return [b"ran again" for _ in batch]

    script = Partly(raw, "0" * 40, ECHO)
    replies = concurrently([lambda k=k: script([k]) for k in ("co:a", "co:b", "co:c")])
    assert Partly.sent == [["co:a", "co:b", "co:c"], ["co:b"]]
    assert replies == [b"ran", b"ran again", b"ran"]


def test_calls_left_by_a_leader_killed_before_sending_are_still_sent(raw: redis.Redis) -> None:
    """The first call of a turn sends the batch; if its greenlet dies first, the others must not hang."""
    script = ScriptBatcher(raw, raw.script_load(ECHO), ECHO, max_connections=1)
    script._slots.acquire()  # every connection busy: the leader waits for one, the others join it
    leader = gevent.spawn(script, ["co:kill"], ("leader",))
    follower = gevent.spawn(script, ["co:kill"], ("follower",))
    gevent.sleep(0.05)
    assert len(script._pending) == 2 and not follower.ready()
    leader.kill()
    script._slots.release()
    assert follower.get(timeout=10)[1:] == [b"follower", 1]  # sent, once, without its leader
    assert isinstance(leader.value, gevent.GreenletExit)


def test_a_reply_is_read_across_several_reads(raw: redis.Redis) -> None:
    """A batch's replies longer than one read arrive in pieces: each call still gets its own whole."""
    script = batcher(raw, "return string.rep(ARGV[1], 100000)")
    replies = concurrently([lambda c=c: script(["co:big"], (c,)) for c in "abc"])
    assert [len(r) for r in replies] == [100000] * 3
    assert [r[:1] for r in replies] == [b"a", b"b", b"c"]
