"""Rate limits by client IP and by service tier, decided atomically in Redis.

The decision is made by ``lua/route.lua`` in the same EVALSHA as the route lookup
(GCRA on Redis ``TIME``, one key per limit), so it holds across every worker and every
proxy node sharing the Redis. This module owns what crosses that call: the limits it
sends (``encode_limits``, JSON the script reads with ``cjson``, built once per worker)
and the verdict it gets back (``LimitVerdict.decode``, a flat array: the cheapest reply
to read on every limited request). The store and the router carry both without reading
them. Here the verdict becomes headers, a 429, or the ``rateLimit.onError`` fallback
when Redis cannot decide.

A frontend's tier is ``tier:<host>`` in Redis (the frontend's host key, as in
``frontend:<host>``); the ``default`` tier applies without one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cjs_proxy import config
from cjs_proxy.config.views import LimiterSettings, view
from cjs_proxy.eventlog import EventLog
from cjs_proxy.exceptions import LimiterUnavailable, RateLimited
from cjs_proxy.pipeline.local_limits import Decision, LocalLimiter
from cjs_proxy.pipeline.router import Route

log = logging.getLogger("cjs_proxy.pipeline.ratelimit")


#: The verdict's values as ``lua/limits.lua`` returns them, in order (its last ``return``).
VERDICT_FIELDS = ("tier_name", "outcome", "policy", "quota", "window", "remaining", "reset",
                  "retry_after_ms", "tier_known")
#: ``outcome`` values besides 1 (allowed).
LIMITED, SHADOW_LIMITED = 0, 2


@dataclass(frozen=True)
class LimitVerdict:
    """The rate limiter's answer for one request, decided in the route lookup's script.

    ``policy`` names the binding limit (the tier, ``ip`` or ``global-ip``): the one that
    refused, or the one with the fewest requests left; ``quota``/``window`` describe it
    (``burst`` requests, refilled in ``window`` seconds), ``remaining`` and ``reset``
    (seconds) its state after this request. ``shadow_limited``: allowed, but over a limit
    of a tier with ``enforce: false``. ``tier_known`` is False when ``tier:<host>`` names
    a tier the config does not have (``tier`` is then ``default``).
    """

    tier: str
    allowed: bool
    shadow_limited: bool
    policy: str
    quota: int
    window: int
    remaining: int
    reset: int
    retry_after_ms: int
    tier_known: bool
    #: Decided in this worker's memory (``rateLimit.onError: local``), not by Redis.
    local: bool = False

    @classmethod
    def decode(cls, values: Sequence[Any]) -> LimitVerdict:
        """The verdict from the script's array (``VERDICT_FIELDS``; strings arrive as bytes)."""
        tier_name, outcome, policy, quota, window, remaining, reset, retry_after_ms, tier_known = values
        return cls(tier=tier_name.decode(), allowed=outcome != LIMITED, shadow_limited=outcome == SHADOW_LIMITED,
                   policy=policy.decode(), quota=quota, window=window, remaining=remaining, reset=reset,
                   retry_after_ms=retry_after_ms, tier_known=tier_known == 1)


def local_verdict(tier: str, outcome: int, binding: Decision | None) -> LimitVerdict:
    """``LocalLimiter.decide``'s answer as the verdict Redis would have given (``route.lua``'s ending)."""
    if binding is None:
        return LimitVerdict(tier, outcome != LIMITED, outcome == SHADOW_LIMITED, "", 0, 0, 0, 0, 0, True, True)
    limit = binding.limit
    return LimitVerdict(tier=tier, allowed=outcome != LIMITED, shadow_limited=outcome == SHADOW_LIMITED,
                        policy=limit.name, quota=math.floor(limit.burst), window=math.ceil(limit.burst / limit.rate),
                        remaining=binding.remaining, reset=math.ceil(binding.reset),
                        retry_after_ms=math.ceil(binding.retry * 1000), tier_known=True, local=True)


def local_limiter(settings: config.Settings, share: int, clock: Callable[[], float]) -> LocalLimiter:
    """The configured limits (rounded as Redis gets them) for ``rateLimit.onError: local``."""
    tiers = {name: {**_limit(tier), "enforce": tier["enforce"],
                    "perIp": _limit(tier["perIp"]) if tier["perIp"] is not None else None}
             for name, tier in settings["rateLimit.tiers"].items()}
    per_ip, global_per_ip = (_limit(settings[f"rateLimit.{key}"]) if settings[f"rateLimit.{key}"] else None
                             for key in ("perIp", "globalPerIp"))
    return LocalLimiter(tiers, per_ip, global_per_ip, share, clock)


def _limit(spec: dict[str, Any]) -> dict[str, float | int]:
    """``{rate, burst}`` as the script gets it: the rate with six significant digits, the
    precision limits have always been applied with (``%g``)."""
    return {"rate": float(f"{spec['rate']:g}"), "burst": spec["burst"]}


def encode_limits(settings: config.Settings) -> str:
    """The configured limits as ``route.lua``'s last argument (see its header).

    Null limits are left out rather than sent as ``null``: cjson turns ``null`` into a
    value that is true in Lua.
    """
    tiers = {}
    for name, tier in settings["rateLimit.tiers"].items():
        spec: dict[str, Any] = {**_limit(tier), "enforce": tier["enforce"]}
        if tier["perIp"] is not None:
            spec["perIp"] = _limit(tier["perIp"])
        tiers[name] = spec
    limits: dict[str, Any] = {"tiers": tiers}
    for key in ("perIp", "globalPerIp"):
        if settings[f"rateLimit.{key}"] is not None:
            limits[key] = _limit(settings[f"rateLimit.{key}"])
    return json.dumps(limits, separators=(",", ":"))


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
        options = view(LimiterSettings, settings)
        self.enabled = options.enabled
        self.fail_closed = options.on_error == "closed"
        self.send_headers = options.headers
        self._limits = encode_limits(settings)
        self.events = EventLog(log, clock)
        #: ``onError: local``: each worker's share of every limit (the node's worker count by default).
        self.share = options.local_share or options.workers
        self.local = local_limiter(settings, self.share, clock) if options.on_error == "local" else None

    def script_args(self, client_ip: str) -> tuple[str, str] | None:
        """The limiter's arguments to the route script (its last two), or None when limits are off."""
        if not self.enabled:
            return None
        return (client_ip, self._limits)

    def verdict(self, route: Route, client_ip: str | None = None) -> LimitVerdict | None:
        """What Redis decided for this request; None when limits are off or Redis could not say.

        With ``onError: local`` and a ``client_ip``, when Redis could not say, this worker
        decides (and counts the request: call it once per request).
        """
        if not self.enabled:
            return None
        if route.limit_answer is None:
            if self.local is None or client_ip is None:
                return None
            return local_verdict(*self.local.decide(route.frontend.key, client_ip))
        verdict = LimitVerdict.decode(route.limit_answer)
        if self.local is not None:
            self.local.remember_tier(route.frontend.key, verdict.tier)
        return verdict

    def check(self, route: Route, client_ip: str, verdict: LimitVerdict | None = None) -> list[tuple[str, str]]:
        """Headers for an allowed request; raises ``RateLimited`` or ``LimiterUnavailable``.

        ``verdict`` is ``self.verdict(route, client_ip)`` when the caller has it already (the pipeline
        notes it for the log and metrics first): the answer is decoded once per request.
        """
        if not self.enabled:
            return []
        verdict = verdict or self.verdict(route, client_ip)
        if verdict is None:
            return self._fallback(route)
        if verdict.local:
            self.events.record("fallback", f"rate limiter unavailable (redis unreachable); fail-local: each "
                               f"worker applies 1/{self.share} of every limit in memory")
        if not verdict.tier_known:
            self.events.record(f"tier:{route.host}", f"{route.host}: unknown tier in Redis, "
                               f"using {verdict.tier!r}")
        if not verdict.allowed:
            error = RateLimited(f"{route.host}: over the {verdict.policy!r} limit (tier {verdict.tier})")
            error.headers = [("Retry-After", str(max(1, math.ceil(verdict.retry_after_ms / 1000)))),
                             *rate_limit_headers(verdict)]
            where = " in this worker (redis unreachable)" if verdict.local else ""
            self.events.record(f"limited:{route.host}:{verdict.policy}",
                               f"{route.host}: limiting {verdict.policy} (tier {verdict.tier}){where}, "
                               f"e.g. {client_ip}", logging.INFO)
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
