"""Rate limits by client IP and by tier, decided in Redis, against the real proxy."""

from __future__ import annotations

import http.client
import threading
import time

import pytest
import requests

from tests.harness import RedisServer, wait_for

UNLIMITED = {"rate": 10000, "burst": 10000}


def limits(**overrides):
    """A rateLimit section: generous defaults, ``free``/``pro``/``trial`` tiers, overrides on top."""
    section = {
        "enabled": True,
        "perIp": UNLIMITED,
        "tiers": {
            "default": UNLIMITED,
            "free": {"rate": 0.05, "burst": 5},
            "pro": {"rate": 1000, "burst": 1000},
            "trial": {"rate": 0.05, "burst": 2, "enforce": False},
        },
    }
    section.update(overrides)
    return section


def get(proxy, host, path="/echo", headers=None, session=None):
    sender = session or requests
    return sender.get(f"{proxy.url}{path}", headers={"Host": host, **(headers or {})}, timeout=10)


def statuses(proxy, host, count, headers=None):
    with requests.Session() as session:
        return [get(proxy, host, headers=headers, session=session).status_code for _ in range(count)]


def get_from(proxy, host, source_ip):
    """A request whose TCP peer is ``source_ip`` (any 127.0.0.0/8 address is loopback)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10, source_address=(source_ip, 0))
    try:
        conn.request("GET", "/echo", headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture()
def limited_proxy(make_proxy):
    return make_proxy(rateLimit=limits())


def test_free_tier_gets_429_after_its_burst_while_pro_keeps_going(limited_proxy, backends, rdb, host):
    free, pro = f"free-{host}", f"pro-{host}"
    for name, tier in ((free, "free"), (pro, "pro")):
        rdb.rpush(f"frontend:{name}", name, backends[0].url)
        rdb.set(f"tier:{name}", tier)
    assert statuses(limited_proxy, free, 8) == [200] * 5 + [429] * 3
    assert statuses(limited_proxy, pro, 50) == [200] * 50

    refused = get(limited_proxy, free)
    assert refused.status_code == 429
    assert "<title>Too many requests</title>" in refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.headers["RateLimit-Policy"] == '"free";q=5;w=100'
    assert refused.headers["RateLimit"].startswith('"free";r=0;t=')
    refused_lines = [line for line in limited_proxy.access_log.read_text().splitlines()
                     if f'"{free}"' in line and '" 429 ' in line]
    assert refused_lines and all(f'"{free}" - ' in line for line in refused_lines)  # no upstream


def test_tier_change_in_redis_takes_effect_on_the_next_request(limited_proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    rdb.set(f"tier:{host}", "free")
    assert statuses(limited_proxy, host, 6)[-1] == 429
    rdb.set(f"tier:{host}", "pro")
    assert get(limited_proxy, host).status_code == 200
    rdb.set(f"tier:{host}", "free")
    assert get(limited_proxy, host).status_code == 429


def test_unknown_tier_falls_back_to_default(limited_proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    rdb.set(f"tier:{host}", "platinum")
    assert statuses(limited_proxy, host, 20) == [200] * 20
    assert "unknown tier" in limited_proxy.log()


def test_wildcard_frontend_tier_is_read_from_its_own_key(limited_proxy, backends, rdb, host):
    rdb.rpush(f"frontend:*.{host}", "app", backends[0].url)
    rdb.set(f"tier:*.{host}", "free")
    # Every subdomain shares the app's budget.
    codes = [get(limited_proxy, f"s{i}.{host}").status_code for i in range(7)]
    assert codes == [200] * 5 + [429] * 2


def test_client_ips_are_limited_independently(make_proxy, backends, rdb, host):
    proxy = make_proxy(rateLimit=limits(perIp={"rate": 0.05, "burst": 3}))
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    assert [get_from(proxy, host, "127.0.0.2") for _ in range(4)] == [200, 200, 200, 429]
    assert [get_from(proxy, host, "127.0.0.3") for _ in range(4)] == [200, 200, 200, 429]


def test_spoofed_forwarded_for_from_untrusted_peer_changes_nothing(make_proxy, backends, rdb, host):
    proxy = make_proxy(rateLimit=limits(perIp={"rate": 0.05, "burst": 3}))
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    codes = [get(proxy, host, headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(5)]
    assert codes == [200, 200, 200, 429, 429]


def test_trusted_proxy_forwarded_for_is_the_client(make_proxy, backends, rdb, host):
    proxy = make_proxy(rateLimit=limits(perIp={"rate": 0.05, "burst": 2}),
                       server_trustedProxies=["127.0.0.0/8"])
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    first = [get(proxy, host, headers={"X-Forwarded-For": "203.0.113.7"}).status_code for _ in range(3)]
    second = [get(proxy, host, headers={"X-Forwarded-For": "203.0.113.8, 127.0.0.5"}).status_code
              for _ in range(3)]
    assert first == [200, 200, 429]
    assert second == [200, 200, 429]
    echoed = get(proxy, host, headers={"X-Forwarded-For": "203.0.113.9"}).json()
    assert dict(echoed["headers"])["X-Real-IP"] == "203.0.113.9"


def test_allowed_responses_carry_ratelimit_fields(make_proxy, backends, rdb, host):
    proxy = make_proxy(rateLimit=limits(perIp={"rate": 1, "burst": 3}))
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    response = get(proxy, host)
    assert response.status_code == 200
    assert response.headers["RateLimit-Policy"] == '"ip";q=3;w=3'
    assert response.headers["RateLimit"] == '"ip";r=2;t=1'
    assert get(proxy, host).headers["RateLimit"].startswith('"ip";r=1;')


def test_ratelimit_fields_only_on_429_when_headers_off(make_proxy, backends, rdb, host):
    proxy = make_proxy(rateLimit=limits(headers=False, perIp={"rate": 0.05, "burst": 1}))
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    allowed, refused = get(proxy, host), get(proxy, host)
    assert allowed.status_code == 200 and "RateLimit" not in allowed.headers
    assert refused.status_code == 429 and "RateLimit" in refused.headers


def test_shadow_tier_counts_and_logs_but_lets_through(limited_proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    rdb.set(f"tier:{host}", "trial")
    assert statuses(limited_proxy, host, 6) == [200] * 6
    assert "shadow tier 'trial'" in limited_proxy.log()


def test_global_per_ip_limit_spans_frontends(make_proxy, backends, rdb, host):
    proxy = make_proxy(rateLimit=limits(globalPerIp={"rate": 0.05, "burst": 4}))
    for name in (f"one-{host}", f"two-{host}"):
        rdb.rpush(f"frontend:{name}", name, backends[0].url)
    codes = [get(proxy, f"one-{host}").status_code for _ in range(2)]
    codes += [get(proxy, f"two-{host}").status_code for _ in range(3)]
    assert codes == [200, 200, 200, 200, 429]


def test_limits_off_by_default(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    rdb.set(f"tier:{host}", "free")
    response = get(proxy, host)
    assert response.status_code == 200 and "RateLimit" not in response.headers


@pytest.mark.parametrize(("on_error", "expected"), [("open", 200), ("closed", 503)])
def test_redis_down_follows_on_error_policy(make_proxy, backends, tmp_path, on_error, expected):
    own_redis = RedisServer(tmp_path / "redis")
    try:
        proxy = make_proxy(redis_url=own_redis.url, rateLimit=limits(onError=on_error))
        own_redis.client().rpush("frontend:down.test", "app", backends[0].url)
        assert get(proxy, "down.test").status_code == 200  # remembered as the last good route
        own_redis.stop()
        responses = [get(proxy, "down.test") for _ in range(5)]
        assert [r.status_code for r in responses] == [expected] * 5
        if expected == 503:
            assert responses[0].headers["Retry-After"] == "1"
        assert "rate limiter unavailable" in proxy.log()
    finally:
        own_redis.stop()


def test_limit_holds_across_workers_and_proxies(make_proxy, backends, rdb, host):
    """Two proxies with two workers each, one Redis: a tier of R/s admits R/s in all."""
    rate, burst, duration = 40, 10, 5.0
    section = limits(tiers={"default": {"rate": rate, "burst": burst}})
    proxies = [make_proxy(rateLimit=section, server_workers=2) for _ in range(2)]
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    admitted = []
    deadline = time.monotonic() + duration

    def hammer(proxy) -> None:
        with requests.Session() as session:
            for _ in range(20000):  # bounded; the deadline ends it first
                if time.monotonic() >= deadline:
                    return
                if get(proxy, host, session=session).status_code == 200:
                    admitted.append(time.monotonic())

    threads = [threading.Thread(target=hammer, args=(p,)) for p in proxies for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 30)
    window = admitted[-1] - admitted[0]
    expected = burst + rate * window  # the full bucket at once, then the sustained rate
    assert abs(len(admitted) - expected) <= 0.05 * expected, (len(admitted), expected)


def test_on_error_local_holds_a_tiers_burst_while_redis_is_stopped(make_proxy, backends, tmp_path, host):
    """One worker, so its share is the whole burst: exactly ``burst`` requests pass while
    Redis is away, and once Redis is back its counters decide again."""
    own_redis = RedisServer(tmp_path / "redis")
    try:
        proxy = make_proxy(redis_url=own_redis.url, rateLimit=limits(onError="local"))
        own_redis.client().rpush(f"frontend:{host}", "app", backends[0].url)
        own_redis.client().set(f"tier:{host}", "free")  # rate 0.05/s, burst 5
        assert get(proxy, host).status_code == 200  # the last good route, and its tier, remembered
        own_redis.stop()
        assert statuses(proxy, host, 12) == [200] * 5 + [429] * 7
        log = proxy.log()
        assert "fail-local: each worker applies 1/1 of every limit in memory" in log
        assert "limiting free (tier free) in this worker (redis unreachable)" in log

        own_redis = RedisServer(tmp_path / "redis", port=own_redis.port)  # empty: routes written again
        own_redis.client().rpush(f"frontend:{host}", "app", backends[0].url)
        own_redis.client().set(f"tier:{host}", "free")
        wait_for(lambda: get(proxy, host).status_code == 200, "Redis deciding again")
        assert own_redis.client().exists(f"rl:tier:free:{host}")  # the decision was Redis's
        assert statuses(proxy, host, 8) == [200] * 4 + [429] * 4  # Redis's fresh burst of 5
    finally:
        own_redis.stop()


def test_on_error_local_divides_the_burst_among_the_workers(make_proxy, backends, tmp_path, host):
    own_redis = RedisServer(tmp_path / "redis")
    try:
        section = limits(onError="local", tiers={"default": {"rate": 0.05, "burst": 6}})
        proxy = make_proxy(redis_url=own_redis.url, rateLimit=section, server_workers=2)
        own_redis.client().rpush(f"frontend:{host}", "app", backends[0].url)
        wait_for(lambda: len(proxy.worker_pids()) == 2, "two workers")
        # Each worker must know the route before Redis goes: new connections until both answered
        # (Redis's counter is reset each time, so the warm-up never meets Redis's own limit).
        seen = set()

        def both_workers_served() -> bool:
            response = requests.get(f"{proxy.url}/echo", timeout=10,
                                    headers={"Host": host, "Connection": "close", "X-Debug": "1"})
            own_redis.client().delete(f"rl:tier:default:{host}")
            seen.add(response.headers["x-debug-worker"])
            return len(seen) == 2

        wait_for(both_workers_served, "both workers served the host")
        own_redis.stop()
        codes = [requests.get(f"{proxy.url}/echo", headers={"Host": host, "Connection": "close"},
                              timeout=10).status_code for _ in range(20)]
        # 3 per worker (6 / 2): never more than the node's burst, at least one worker's share.
        assert 3 <= codes.count(200) <= 6 and codes.count(200) + codes.count(429) == 20, codes
    finally:
        own_redis.stop()
