"""Log lines for events that can repeat on every request: counted, logged at most once per interval.

A dead frontend in panic mode, a client over its limit or Redis being unreachable can
happen thousands of times a second; the log gets one line per kind of event and
interval, with how often it happened in this worker so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Seconds between two log lines for the same key.
LOG_INTERVAL = 10.0
#: Keys remembered at most; past this the memory starts over (keys often name hosts).
MAX_KEYS = 10_000


class EventLog:
    """Counts events by key and logs each key at most once per ``LOG_INTERVAL``."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.clock = clock
        self.counts: dict[str, int] = {}
        self._logged: dict[str, float] = {}

    def record(self, key: str, message: str, level: int = logging.WARNING) -> None:
        if key not in self.counts and len(self.counts) >= MAX_KEYS:
            self.counts.clear()
            self._logged.clear()
        self.counts[key] = self.counts.get(key, 0) + 1
        now = self.clock()
        if now - self._logged.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._logged[key] = now
            self.logger.log(level, "%s (%d so far in this worker)", message, self.counts[key])
