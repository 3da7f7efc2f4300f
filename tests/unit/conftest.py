"""Unit-test fixtures."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest


@pytest.fixture()
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC for the test (log timestamps compared as text)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
