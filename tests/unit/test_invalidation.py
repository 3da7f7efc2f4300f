"""The route cache's invalidation feed, without Redis: what it reads and when it gives up."""

from __future__ import annotations

import pytest
import redis

from cjs_proxy.pipeline.invalidation import InvalidationFeed, drain


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
