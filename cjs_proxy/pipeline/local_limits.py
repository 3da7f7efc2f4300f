"""``rateLimit.onError: local``: the limits applied in a worker's memory while Redis cannot decide.

The same GCRA as ``lua/route.lua`` (the same limits, keys and binding-limit choice),
on the worker's monotonic clock instead of Redis ``TIME``, with every limit divided
by ``rateLimit.localShare`` (by default the node's number of workers): each worker
holds its share, so the node as a whole stays within the configured budget while its
workers cannot agree through Redis. A share of a burst is never below one request:
a tier whose burst is smaller than the share lets each worker take one request at
once (the sustained rate is still divided).

The frontend's tier is ``tier:<host>`` in Redis, out of reach now: the tier Redis last
named for the frontend is remembered (``remember_tier``, from every verdict Redis
gives), else ``default``. Nothing is written back to Redis when it returns: requests
allowed here are not counted there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cjs_proxy.boundedcache import BoundedCache

#: Limit states and remembered tiers kept at most (least recently used forgotten: a fresh budget).
MAX_KEYS = 50_000


@dataclass(frozen=True)
class LocalLimit:
    """One limit as this worker applies it: its share of ``rate`` and ``burst``."""

    name: str
    key: str
    rate: float
    burst: float
    enforce: bool


@dataclass
class Decision:
    """One limit's answer for one request (the fields ``LimitVerdict`` reports)."""

    limit: LocalLimit
    allowed: bool
    remaining: int
    reset: float
    retry: float
    new_tat: float = 0.0


def share_of(spec: dict[str, Any], share: int) -> tuple[float, float]:
    """(rate, burst) of one worker: the configured ones divided by ``share``, a burst of at least 1."""
    return spec["rate"] / share, max(1.0, spec["burst"] / share)


class LocalLimiter:
    """GCRA states by limit key, in this worker's memory."""

    def __init__(self, tiers: dict[str, dict[str, Any]], per_ip: dict[str, Any] | None,
                 global_per_ip: dict[str, Any] | None, share: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tiers = tiers
        self.per_ip = per_ip
        self.global_per_ip = global_per_ip
        self.share = share
        self.clock = clock
        #: Theoretical arrival time (seconds of ``clock``) by limit key, as route.lua keeps in Redis.
        self.tats: BoundedCache[str, float] = BoundedCache(MAX_KEYS)
        #: The tier Redis last named for a frontend (its matched key, e.g. ``*.example.com``).
        self.known_tiers: BoundedCache[str, str] = BoundedCache(MAX_KEYS)

    def remember_tier(self, app: str, tier: str) -> None:
        if self.known_tiers.get(app) != tier:
            self.known_tiers[app] = tier

    def limits_for(self, app: str, client_ip: str) -> tuple[str, list[LocalLimit]]:
        """The tier's name and the limits that apply, in ``route.lua``'s order and key names."""
        tier_name = self.known_tiers.get(app, "default")
        if tier_name not in self.tiers:
            tier_name = "default"
        tier = self.tiers[tier_name]
        limits = [self._limit(tier_name, f"tier:{tier_name}:{app}", tier, tier["enforce"])]
        if tier.get("perIp") is not None:
            limits.append(self._limit("ip", f"ip:{tier_name}:{app}:{client_ip}", tier["perIp"], tier["enforce"]))
        elif self.per_ip is not None:
            limits.append(self._limit("ip", f"ip::{app}:{client_ip}", self.per_ip, True))
        if self.global_per_ip is not None:
            limits.append(self._limit("global-ip", f"gip:{client_ip}", self.global_per_ip, True))
        return tier_name, limits

    def _limit(self, name: str, key: str, spec: dict[str, Any], enforce: bool) -> LocalLimit:
        rate, burst = share_of(spec, self.share)
        return LocalLimit(name, key, rate, burst, enforce)

    def decide(self, app: str, client_ip: str) -> tuple[str, int, Decision | None]:
        """(tier, outcome, binding decision): outcome 1 allowed, 0 limited, 2 over a shadow limit.

        As ``route.lua``: every limit is checked, states move on only when no enforced
        limit refused, and the binding limit is the one that refused or has fewest left.
        """
        tier_name, limits = self.limits_for(app, client_ip)
        now = self.clock()
        outcome, binding = 1, None
        decisions = [self._check(limit, now) for limit in limits if limit.rate > 0]
        for decision in decisions:
            if not decision.allowed:
                if decision.limit.enforce:
                    outcome = 0
                elif outcome == 1:
                    outcome = 2
            if binding is None or (not decision.allowed and binding.allowed) or \
                    (decision.allowed == binding.allowed and decision.remaining < binding.remaining):
                binding = decision
        if outcome != 0:
            for decision in decisions:
                if decision.allowed:
                    self.tats[decision.limit.key] = decision.new_tat
        return tier_name, outcome, binding

    def _check(self, limit: LocalLimit, now: float) -> Decision:
        interval = 1.0 / limit.rate
        tolerance = interval * limit.burst
        tat = max(self.tats.get(limit.key, now), now)
        new_tat = tat + interval
        allow_at = new_tat - tolerance
        if now < allow_at:
            return Decision(limit, False, 0, tat - now, allow_at - now)
        # The small epsilon keeps float error from losing a whole request of the burst.
        remaining = math.floor((now - allow_at) / interval + 1e-9)
        return Decision(limit, True, remaining, new_tat - now, 0.0, new_tat)
