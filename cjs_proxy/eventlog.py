"""Log lines for events that can repeat on every request: counted, logged at most once per interval.

A dead frontend in panic mode, a client over its limit or Redis being unreachable can
happen thousands of times a second; the log gets one line per kind of event and
interval, with how often it happened in this worker so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cjs_proxy.boundedcache import BoundedCache

#: Seconds between two log lines for the same key.
LOG_INTERVAL = 10.0
#: Keys remembered at most; past this the least recently seen is forgotten (keys often name hosts).
MAX_KEYS = 10_000


@dataclass
class Seen:
    """One key's count so far, and when it was last logged."""

    count: int = 0
    logged_at: float = -LOG_INTERVAL


class EventLog:
    """Counts events by key and logs each key at most once per ``LOG_INTERVAL``."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.clock = clock
        #: Count and last line per key, in one bounded mapping so both are forgotten together.
        self.seen: BoundedCache[str, Seen] = BoundedCache(MAX_KEYS)

    def record(self, key: str, message: str, level: int = logging.WARNING) -> None:
        seen = self.seen.get(key)
        if seen is None:
            seen = self.seen[key] = Seen()
        seen.count += 1
        now = self.clock()
        if now - seen.logged_at >= LOG_INTERVAL:
            seen.logged_at = now
            self.logger.log(level, "%s (%d so far in this worker)", message, seen.count)
