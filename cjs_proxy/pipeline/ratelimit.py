"""Rate limits by client IP and by service tier, decided atomically in Redis.

The decision is made by ``lua/route.lua`` in the same EVALSHA as the route lookup
(GCRA on Redis ``TIME``, one key per limit), so it holds across every worker and every
proxy node sharing the Redis. This module encodes the configured limits as script
arguments and turns the verdict into headers, a 429, or the ``rateLimit.onError``
fallback when Redis cannot decide.

A frontend's tier is ``tier:<host>`` in Redis (the frontend's host key, as in
``frontend:<host>``); the ``default`` tier applies without one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from cjs_proxy import config
from cjs_proxy.eventlog import EventLog
from cjs_proxy.exceptions import LimiterUnavailable, RateLimited
from cjs_proxy.pipeline.router import Route
from cjs_proxy.pipeline.store import LimitVerdict

log = logging.getLogger("cjs_proxy.pipeline.ratelimit")



def _limit_arg(spec: dict[str, Any] | None) -> str:
    return "" if spec is None else f"{spec['rate']:g}|{spec['burst']}"


def encode_tiers(tiers: dict[str, dict[str, Any]]) -> str:
    """``name|rate|burst|ipRate|ipBurst|enforce;...`` with ``default`` first."""
    ordered = sorted(tiers.items(), key=lambda item: item[0] != "default")
    return ";".join(
        f"{name}|{t['rate']:g}|{t['burst']}|{_limit_arg(t['perIp']) or '|'}|{int(t['enforce'])}"
        for name, t in ordered)


def rate_limit_headers(verdict: LimitVerdict) -> list[tuple[str, str]]:
    """The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers) for the binding limit."""
    if not verdict.policy:
        return []
    name = verdict.policy.replace('"', "")
    return [("RateLimit-Policy", f'"{name}";q={verdict.quota};w={max(1, verdict.window)}'),
            ("RateLimit", f'"{name}";r={verdict.remaining};t={verdict.reset}')]


class RateLimiter:
    """One worker's view of the configured limits."""

    def __init__(self, settings: config.Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled: bool = settings["rateLimit.enabled"]
        self.fail_closed = settings["rateLimit.onError"] == "closed"
        self.send_headers: bool = settings["rateLimit.headers"]
        self._args = (encode_tiers(settings["rateLimit.tiers"]), _limit_arg(settings["rateLimit.perIp"]),
                      _limit_arg(settings["rateLimit.globalPerIp"]))
        self.events = EventLog(log, clock)

    def script_args(self, client_ip: str) -> tuple[str, ...] | None:
        """Arguments for the route script (after the prefix), or None when limits are off."""
        if not self.enabled:
            return None
        return (client_ip, *self._args)

    def check(self, route: Route, client_ip: str) -> list[tuple[str, str]]:
        """Headers for an allowed request; raises ``RateLimited`` or ``LimiterUnavailable``."""
        if not self.enabled:
            return []
        verdict = route.limit
        if verdict is None:
            return self._fallback(route)
        if not verdict.tier_known:
            self.events.record(f"tier:{route.host}", f"{route.host}: unknown tier in Redis, "
                               f"using {verdict.tier!r}")
        if not verdict.allowed:
            error = RateLimited(f"{route.host}: over the {verdict.policy!r} limit (tier {verdict.tier})")
            error.headers = [("Retry-After", str(max(1, math.ceil(verdict.retry_after_ms / 1000)))),
                             *rate_limit_headers(verdict)]
            self.events.record(f"limited:{route.host}:{verdict.policy}",
                               f"{route.host}: limiting {verdict.policy} (tier {verdict.tier}), e.g. {client_ip}",
                               logging.INFO)
            raise error
        if verdict.shadow_limited:
            self.events.record(f"shadow:{route.host}",
                               f"{route.host}: over the {verdict.policy!r} limit of shadow tier "
                               f"{verdict.tier!r}, let through (enforce: false)")
        return rate_limit_headers(verdict) if self.send_headers else []

    def _fallback(self, route: Route) -> list[tuple[str, str]]:
        """Redis could not decide (the route is a stale one): apply ``rateLimit.onError``."""
        policy = "closed: refusing" if self.fail_closed else "open: allowing"
        self.events.record("fallback", f"rate limiter unavailable (redis unreachable); fail-{policy} requests")
        if self.fail_closed:
            error = LimiterUnavailable(f"{route.host}: rate limits cannot be checked")
            error.headers = [("Retry-After", "1")]
            raise error
        return []
