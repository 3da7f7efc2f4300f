"""The rate limiter's side of the route script: what it sends, what it reads back, what it answers.

The script itself runs in Redis (tests/functional/test_ratelimit.py); here the wire
format is checked from both ends without one.
"""

from __future__ import annotations

import json
import re

import pytest

from cjs_proxy import config
from cjs_proxy.exceptions import LimiterUnavailable, RateLimited
from cjs_proxy.pipeline.ratelimit import VERDICT_FIELDS, LimitVerdict, RateLimiter, encode_limits, rate_limit_headers
from cjs_proxy.pipeline.router import Route
from cjs_proxy.pipeline.store import LUA_DIR, Frontend


def settings(**rate_limit: object) -> config.Settings:
    return config.parse_settings({"rateLimit": {"enabled": True, **rate_limit}})


def answer(**overrides: object) -> list[object]:
    """A verdict as route.lua returns it through redis-py: strings as bytes, integers as int."""
    values = {"tier_name": b"free", "outcome": 1, "policy": b"ip", "quota": 3, "window": 3,
              "remaining": 2, "reset": 1, "retry_after_ms": 0, "tier_known": 1, **overrides}
    return [values[name] for name in VERDICT_FIELDS]


def route(limit_answer: list[object] | None, stale: bool = False) -> Route:
    return Route("app.example", Frontend("app.example", "app", ("http://127.0.0.1:1",), frozenset()),
                 limit_answer=limit_answer, stale=stale)


# ------------------------------------------------------------------ what is sent


def test_limits_are_sent_as_one_json_object_with_every_tier() -> None:
    sent = json.loads(encode_limits(settings(
        perIp={"rate": 100, "burst": 200}, globalPerIp={"rate": 0.5, "burst": 4},
        tiers={"default": {"rate": 50, "burst": 100},
               "free": {"rate": 10, "burst": 20, "perIp": {"rate": 5, "burst": 10}},
               "trial": {"rate": 10, "burst": 20, "enforce": False}})))
    assert sent == {
        "tiers": {"default": {"rate": 50.0, "burst": 100, "enforce": True},
                  "free": {"rate": 10.0, "burst": 20, "enforce": True, "perIp": {"rate": 5.0, "burst": 10}},
                  "trial": {"rate": 10.0, "burst": 20, "enforce": False}},
        "perIp": {"rate": 100.0, "burst": 200},
        "globalPerIp": {"rate": 0.5, "burst": 4},
    }


def test_absent_limits_are_left_out_not_null() -> None:
    """cjson makes ``null`` a true value in Lua: a missing key is the only safe "none"."""
    sent = encode_limits(settings(perIp=None, globalPerIp=None, tiers={"default": {"rate": 1, "burst": 1}}))
    assert "null" not in sent
    assert json.loads(sent) == {"tiers": {"default": {"rate": 1.0, "burst": 1, "enforce": True}}}


def test_rates_keep_six_significant_digits_as_before() -> None:
    sent = json.loads(encode_limits(settings(tiers={"default": {"rate": 0.123456789, "burst": 1}})))
    assert sent["tiers"]["default"]["rate"] == 0.123457


def test_script_args_are_the_client_ip_and_the_limits_built_once() -> None:
    limiter = RateLimiter(settings())
    first, second = limiter.script_args("192.0.2.1"), limiter.script_args("192.0.2.2")
    assert first is not None and second is not None
    assert first[0] == "192.0.2.1" and second[0] == "192.0.2.2"
    assert first[1] is second[1]  # encoded at start, not per request
    assert json.loads(first[1])["tiers"]["default"] == {"rate": 50.0, "burst": 100, "enforce": True}


def test_no_script_args_when_limits_are_off() -> None:
    assert RateLimiter(config.parse_settings({})).script_args("192.0.2.1") is None


# ------------------------------------------------------------ what comes back


def test_a_verdict_is_decoded_value_by_value() -> None:
    verdict = LimitVerdict.decode(answer(tier_name=b"pro", outcome=0, policy=b"global-ip", quota=4, window=8,
                                         remaining=0, reset=7, retry_after_ms=1500, tier_known=0))
    assert verdict == LimitVerdict(tier="pro", allowed=False, shadow_limited=False, policy="global-ip",
                                   quota=4, window=8, remaining=0, reset=7, retry_after_ms=1500,
                                   tier_known=False)


@pytest.mark.parametrize(("outcome", "allowed", "shadow_limited"), [(1, True, False), (0, False, False),
                                                                     (2, True, True)])
def test_the_outcome_is_allowed_limited_or_over_a_shadow_limit(outcome: int, allowed: bool,
                                                               shadow_limited: bool) -> None:
    verdict = LimitVerdict.decode(answer(outcome=outcome))
    assert (verdict.allowed, verdict.shadow_limited) == (allowed, shadow_limited)


def test_no_binding_limit_is_an_empty_policy() -> None:
    verdict = LimitVerdict.decode(answer(policy=b"", quota=0, window=0, remaining=0, reset=0))
    assert verdict.policy == "" and rate_limit_headers(verdict) == []


def test_a_verdict_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError):
        LimitVerdict.decode(answer()[:-1])


def test_the_script_returns_the_values_in_the_decoders_order() -> None:
    """route.lua's last return and VERDICT_FIELDS name the same values in the same order."""
    script = (LUA_DIR / "route.lua").read_text(encoding="utf-8")
    returned = re.findall(r"return \{position, frontend, dead,\s*\{([^}]*)\}, routing\}", script)
    assert len(returned) == 1
    assert tuple(name.strip() for name in returned[0].split(",")) == VERDICT_FIELDS


# ------------------------------------------------------------------ what it answers


def test_allowed_request_gets_the_ratelimit_fields() -> None:
    headers = RateLimiter(settings()).check(route(answer()), "192.0.2.1")
    assert headers == [("RateLimit-Policy", '"ip";q=3;w=3'), ("RateLimit", '"ip";r=2;t=1')]


def test_no_fields_on_allowed_requests_when_headers_are_off() -> None:
    assert RateLimiter(settings(headers=False)).check(route(answer()), "192.0.2.1") == []


def test_limited_request_is_a_429_with_retry_after() -> None:
    verdict = answer(outcome=0, policy=b"free", quota=5, window=100, remaining=0, reset=20,
                     retry_after_ms=19_001)
    with pytest.raises(RateLimited) as raised:
        RateLimiter(settings()).check(route(verdict), "192.0.2.1")
    assert raised.value.headers == [("Retry-After", "20"), ("RateLimit-Policy", '"free";q=5;w=100'),
                                    ("RateLimit", '"free";r=0;t=20')]


def test_shadow_limit_lets_through_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    verdict = answer(tier_name=b"trial", policy=b"trial", outcome=2, remaining=0)
    assert RateLimiter(settings()).check(route(verdict), "192.0.2.1")
    assert "shadow tier 'trial'" in caplog.text


def test_unknown_tier_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    RateLimiter(settings()).check(route(answer(tier_name=b"default", tier_known=0)), "192.0.2.1")
    assert "unknown tier in Redis, using 'default'" in caplog.text


def test_no_verdict_fails_open_or_closed_as_configured() -> None:
    stale = route(None, stale=True)
    assert RateLimiter(settings(onError="open")).check(stale, "192.0.2.1") == []
    with pytest.raises(LimiterUnavailable) as raised:
        RateLimiter(settings(onError="closed")).check(stale, "192.0.2.1")
    assert raised.value.headers == [("Retry-After", "1")]
