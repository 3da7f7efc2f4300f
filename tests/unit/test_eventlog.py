"""Repeated events: counted, logged at most once per interval, bounded memory."""

from __future__ import annotations

import logging

import pytest

from cjs_proxy import eventlog
from cjs_proxy.eventlog import EventLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_and_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    events = EventLog(logging.getLogger("test.events"), clock)
    with caplog.at_level(logging.INFO, "test.events"):
        for _ in range(5):
            events.record("a", "thing a")
        events.record("b", "thing b")
        clock.now += eventlog.LOG_INTERVAL
        events.record("a", "thing a")
    assert [r.getMessage() for r in caplog.records] == [
        "thing a (1 so far in this worker)", "thing b (1 so far in this worker)", "thing a (6 so far in this worker)"]


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "MAX_KEYS", 3)
    events = EventLog(logging.getLogger("test.events"), Clock())
    for i in range(10):
        events.record(f"host{i}", "x")
    assert len(events.seen) <= 3


def test_past_the_bound_a_repeating_event_keeps_its_count(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(eventlog, "MAX_KEYS", 3)
    clock = Clock()
    events = EventLog(logging.getLogger("test.events"), clock)
    with caplog.at_level(logging.INFO, "test.events"):
        for i in range(10):
            events.record("busy", "busy")  # seen between every new key: never the one forgotten
            events.record(f"host{i}", "x")
        clock.now += eventlog.LOG_INTERVAL
        events.record("busy", "busy")
    assert caplog.records[-1].getMessage() == "busy (11 so far in this worker)"
