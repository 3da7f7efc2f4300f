"""A client connection's clocks (``workers.client_connection``)."""

from __future__ import annotations

import time

from cjs_proxy.config.views import ClientLimits
from workers.client_connection import HEAD_DEADLINE_SPREAD, ClientConnection

LIMITS = ClientLimits(keep_alive_timeout=5, header_timeout=10.0, max_header_bytes=32768, body_timeout=60,
                      send_timeout=60, linger_time=5)


def test_connections_opened_together_get_first_head_deadlines_spread_over_a_tenth_of_the_timeout():
    started = time.monotonic()
    deadlines = [ClientConnection(None, LIMITS).head_deadline - started for _ in range(200)]
    took = time.monotonic() - started
    longest = LIMITS.header_timeout * (1 + HEAD_DEADLINE_SPREAD)
    assert min(deadlines) >= LIMITS.header_timeout and max(deadlines) <= longest + took
    assert max(deadlines) - min(deadlines) > LIMITS.header_timeout * HEAD_DEADLINE_SPREAD / 2  # not one instant
