"""``rateLimit.onError: local``: route.lua's GCRA in a worker's memory, each limit divided by the share."""

from __future__ import annotations

import logging

import pytest

from cjs_proxy import config
from cjs_proxy.exceptions import RateLimited
from cjs_proxy.pipeline.local_limits import LocalLimiter, share_of
from cjs_proxy.pipeline.metrics import limit_decision
from cjs_proxy.pipeline.ratelimit import VERDICT_FIELDS, RateLimiter
from cjs_proxy.pipeline.router import Route
from cjs_proxy.pipeline.store import Frontend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tier(rate: float, burst: int, per_ip: dict | None = None, enforce: bool = True) -> dict:
    return {"rate": rate, "burst": burst, "perIp": per_ip, "enforce": enforce}


def limiter(share: int = 1, clock: Clock | None = None, per_ip: dict | None = None,
            global_per_ip: dict | None = None, **tiers: dict) -> LocalLimiter:
    return LocalLimiter({"default": tier(1000, 1000), **tiers}, per_ip, global_per_ip, share, clock or Clock())


def allowed(local: LocalLimiter, count: int, app: str = "app.test", ip: str = "192.0.2.1") -> int:
    return sum(local.decide(app, ip)[1] != 0 for _ in range(count))


def test_a_burst_is_allowed_at_once_then_refused() -> None:
    local = limiter(free=tier(0.5, 10))
    local.remember_tier("app.test", "free")
    assert allowed(local, 30) == 10


def test_the_rate_refills_on_the_workers_clock() -> None:
    clock = Clock()
    local = limiter(clock=clock, free=tier(2, 4))
    local.remember_tier("app.test", "free")
    assert allowed(local, 10) == 4
    clock.now += 1.0  # two more at 2 per second
    assert allowed(local, 10) == 2
    clock.now += 100.0  # never more than the burst
    assert allowed(local, 10) == 4


def test_each_worker_holds_its_share_of_rate_and_burst() -> None:
    clock = Clock()
    workers = [limiter(share=4, clock=clock, free=tier(4, 20)) for _ in range(4)]
    for local in workers:
        local.remember_tier("app.test", "free")
    assert sum(allowed(local, 50) for local in workers) == 20  # the node's burst, 5 each
    clock.now += 2.0
    assert sum(allowed(local, 50) for local in workers) == 8  # the node's rate: 4/s, 1/s each


def test_a_share_of_a_burst_is_never_below_one_request() -> None:
    assert share_of({"rate": 10, "burst": 2}, 8) == (10 / 8, 1.0)
    assert allowed(limiter(share=8, small=tier(10, 2)), 5) >= 1


def test_the_tier_is_the_one_redis_last_named_else_default() -> None:
    local = limiter(free=tier(0.01, 2), pro=tier(0.01, 5))
    assert local.decide("a.test", "192.0.2.1")[0] == "default"
    local.remember_tier("a.test", "pro")
    assert local.decide("a.test", "192.0.2.1")[0] == "pro"
    local.remember_tier("a.test", "gone-from-config")
    assert local.decide("a.test", "192.0.2.1")[0] == "default"


def test_per_ip_limits_use_route_luas_keys_and_bind() -> None:
    local = limiter(per_ip={"rate": 0.01, "burst": 2})
    assert allowed(local, 5, ip="192.0.2.1") == 2
    assert allowed(local, 5, ip="192.0.2.2") == 2  # another client has its own budget
    assert "ip::app.test:192.0.2.1" in local.tats
    tier_name, outcome, binding = local.decide("app.test", "192.0.2.1")
    assert (tier_name, outcome, binding.limit.name if binding else None) == ("default", 0, "ip")


def test_a_refused_request_moves_no_state() -> None:
    local = limiter(per_ip={"rate": 0.01, "burst": 1}, global_per_ip={"rate": 0.01, "burst": 100})
    assert allowed(local, 1) == 1
    before = local.tats.get("gip:192.0.2.1")
    assert allowed(local, 3) == 0
    assert local.tats.get("gip:192.0.2.1") == before


def test_a_shadow_tier_counts_but_lets_through() -> None:
    local = limiter(trial=tier(0.01, 1, enforce=False))
    local.remember_tier("app.test", "trial")
    outcomes = [local.decide("app.test", "192.0.2.1")[1] for _ in range(3)]
    assert outcomes == [1, 2, 2]


# ------------------------------------------------------------ through RateLimiter


def settings(**rate_limit: object) -> config.Settings:
    return config.parse_settings({"server": {"workers": 2}, "rateLimit": {
        "enabled": True, "onError": "local", "perIp": None,
        "tiers": {"default": {"rate": 1000, "burst": 1000}, "free": {"rate": 0.01, "burst": 6}}, **rate_limit}})


def route(limit_answer: list | None) -> Route:
    return Route("app.test", Frontend("app.test", "app", ("http://127.0.0.1:1",), frozenset()),
                 limit_answer=limit_answer, stale=limit_answer is None)


def redis_answer(tier_name: bytes) -> list:
    values = {"tier_name": tier_name, "outcome": 1, "policy": tier_name, "quota": 6, "window": 600,
              "remaining": 5, "reset": 100, "retry_after_ms": 0, "tier_known": 1}
    return [values[name] for name in VERDICT_FIELDS]


def test_the_share_defaults_to_the_workers_and_can_be_set() -> None:
    assert RateLimiter(settings()).share == 2
    assert RateLimiter(settings(localShare=6)).share == 6
    assert RateLimiter(settings(onError="open")).local is None


def test_while_redis_is_away_the_worker_decides_with_the_tier_redis_named(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter(settings())
    limiter.verdict(route(redis_answer(b"free")), "192.0.2.1")  # Redis said: tier free
    caplog.set_level(logging.INFO)
    decisions = []
    for _ in range(5):
        verdict = limiter.verdict(route(None), "192.0.2.1")
        decisions.append(limit_decision(verdict, True, True))
        try:
            limiter.check(route(None), "192.0.2.1", verdict)
        except RateLimited as exc:
            assert dict(exc.headers)["Retry-After"]
    assert decisions == ["local-allowed"] * 3 + ["local-limited"] * 2  # 6 / 2 workers
    assert "fail-local: each worker applies 1/2 of every limit" in caplog.text
    assert "limiting free (tier free) in this worker (redis unreachable)" in caplog.text


def test_when_redis_answers_again_its_verdict_decides() -> None:
    limiter = RateLimiter(settings())
    for _ in range(5):
        limiter.verdict(route(None), "192.0.2.1")
    verdict = limiter.verdict(route(redis_answer(b"free")), "192.0.2.1")
    assert verdict is not None and verdict.allowed and not verdict.local
    assert limit_decision(verdict, True, True) == "allowed"
