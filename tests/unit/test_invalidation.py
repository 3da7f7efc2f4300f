"""The route cache's invalidation feed, without Redis: what it reads and when it gives up."""

from __future__ import annotations

import pytest
import redis

from cjs_proxy.pipeline.invalidation import InvalidationFeed, changed_keys, drain


class FakeConnection:
    """Answers ``read_response`` from a script: messages, then nothing more to read."""

    def __init__(self, *replies: object) -> None:
        self.replies = list(replies)
        self.reads = 0

    def read_response(self, *, timeout: float, disconnect_on_error: bool) -> object:
        assert timeout == 0 and disconnect_on_error is False  # never waits, never closes on its own
        self.reads += 1
        reply = self.replies.pop(0) if self.replies else redis.exceptions.TimeoutError("nothing")
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_drain_reads_every_message_that_arrived_then_stops() -> None:
    connection = FakeConnection([b"message", b"__redis__:invalidate", [b"frontend:a"]], [b"message"])
    drain(connection)  # type: ignore[arg-type]
    assert connection.reads == 3 and not connection.replies


def invalidation(*keys: bytes) -> list[object]:
    """A redirected invalidation as redis-py reads it in RESP2 (checked against redis-server 6.2)."""
    return [b"message", b"__redis__:invalidate", list(keys)]


def test_invalidations_name_the_keys_without_the_drivers_prefix() -> None:
    replies = [invalidation(b"pre:frontend:a.test"), invalidation(b"pre:dead:a.test", b"pre:dead:b.test")]
    assert changed_keys(replies, "pre:") == ["frontend:a.test", "dead:a.test", "dead:b.test"]
    assert changed_keys([invalidation(b"backends:x")], "") == ["backends:x"]
    assert changed_keys([], "pre:") == []  # nothing whole arrived yet


def test_a_flush_means_everything() -> None:
    """FLUSHALL and FLUSHDB are announced with a null payload."""
    assert changed_keys([invalidation(b"dead:a"), [b"message", b"__redis__:invalidate", None]], "") is True


def test_a_reply_that_is_not_an_invalidation_means_everything() -> None:
    assert changed_keys([[b"message", b"another-channel", [b"dead:a"]]], "") is True
    assert changed_keys([b"OK"], "") is True


def test_drain_reports_a_connection_closed_by_redis() -> None:
    connection = FakeConnection(redis.exceptions.ConnectionError("Connection closed by server."))
    with pytest.raises(redis.exceptions.ConnectionError):
        drain(connection)  # type: ignore[arg-type]


def test_a_feed_not_connected_says_everything_changed() -> None:
    feed = InvalidationFeed("redis://127.0.0.1:1/0#pre:", timeout=0.1, clock=lambda: -1.0)  # no attempt due
    assert feed.changed() is True
    assert feed.keys.routing_prefixes() == [
        "pre:frontend:", "pre:dead:", "pre:tier:", "pre:backends:", "pre:identifier:", "pre:deadurls:",
        "pre:balance:", "pre:weights:"]
