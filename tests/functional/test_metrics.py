"""Metrics, health pages and JSON logs against the real gunicorn process (2 workers) and real Redis."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Proxy, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
UNLIMITED = {"rate": 10000, "burst": 10000}
LIMITS = {"enabled": True, "perIp": UNLIMITED,
          "tiers": {"default": UNLIMITED, "tiny": {"rate": 0.001, "burst": 1}}}
COMBINED_FIELDS = {"remote_addr", "time", "method", "uri", "protocol", "status", "bytes_sent", "referer",
                   "user_agent", "vhost", "upstream", "request_time", "upstream_time", "request_id", "extra"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def admin(**overrides: Any) -> dict[str, Any]:
    """``make_proxy`` overrides for a proxy with its admin listener on a free loopback port."""
    return {"admin_bind": [{"address": "127.0.0.1", "port": free_port()}], **overrides}


def admin_url(proxy: Proxy, path: str) -> str:
    entry = proxy.config["admin"]["bind"][0]
    return f"http://{entry['address']}:{entry['port']}{path}"


def scrape_when(proxy: Proxy, name: str, expected: float, before: Samples | None = None,
                timeout: float = 15.0) -> Samples:
    """A scrape in which ``name`` (its increase since ``before``) has reached ``expected``.

    Workers write their values once a second (``FLUSH_INTERVAL``): the last requests may
    take that long to show.
    """
    found: list[Samples] = []

    def reached() -> bool:
        found[:] = [scrape(proxy)]
        return total(found[0], name) - (total(before, name) if before else 0) == expected

    until(reached, timeout, f"{name} at {expected}")
    return found[0]


def settled(proxy: Proxy) -> Samples:
    """A baseline scrape: once two scrapes a flush interval apart agree (earlier requests all written)."""
    found = [scrape(proxy)]

    def stable() -> bool:
        time.sleep(1.2)
        previous, found[0] = found[0], scrape(proxy)
        name = "cjs_proxy_request_duration_seconds_count"
        return total(previous, name) == total(found[0], name)

    until(stable, 20, "metrics settled")
    return found[0]


def scrape(proxy: Proxy) -> Samples:
    response = requests.get(admin_url(proxy, "/metrics"), timeout=10)
    assert response.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and wanted <= lab)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def get(proxy: Proxy, host: str, path: str = "/", **headers: str) -> requests.Response:
    """One request on its own connection, so the kernel may hand it to either worker."""
    return requests.get(f"{proxy.url}{path}", headers={"Host": host, "Connection": "close", **headers}, timeout=10)


def until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout}s")
        time.sleep(0.1)


def ok_until_both_workers_answered(proxy: Proxy, host: str, limit: int = 400) -> int:
    """200s until each of the 2 workers has answered one (``x-debug-worker``); how many were sent."""
    seen: set[str] = set()
    for sent in range(1, limit + 1):
        response = get(proxy, host, "/", **{"X-Debug": "1"})
        assert response.status_code == 200
        seen.add(response.headers["x-debug-worker"])
        if len(seen) == 2 and sent >= 6:
            return sent
    raise AssertionError(f"only workers {seen} answered {limit} requests")


@pytest.fixture()
def monitored(make_proxy: Callable[..., Proxy]) -> Proxy:
    """2 workers, rate limits on (``tiny``: one request), no route cache: every lookup is counted exactly."""
    return make_proxy(**admin(server_workers=2, server_routeCache=False, rateLimit=LIMITS,
                              server_accessLogFormat="json"))


def test_counters_match_the_traffic_summed_over_both_workers(monitored, rdb, backends, host) -> None:
    tiny, dead = f"tiny-{host}", f"dead-{host}"
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    rdb.rpush(f"frontend:{tiny}", "tiny-app", backends[0].url)
    rdb.set(f"tier:{tiny}", "tiny")
    rdb.rpush(f"frontend:{dead}", "dead-app", f"http://127.0.0.1:{free_port()}")
    before = settled(monitored)

    oks = ok_until_both_workers_answered(monitored, host)
    assert get(monitored, host, "/status/404").status_code == 404
    assert [get(monitored, tiny).status_code for _ in range(2)] == [200, 429]
    assert get(monitored, f"unknown-{host}").status_code == 400
    assert get(monitored, dead).status_code == 502
    after = scrape_when(monitored, "cjs_proxy_request_duration_seconds_count", oks + 5, before)

    assert delta(after, before, "cjs_proxy_requests_total", code="2xx") == oks + 1
    assert delta(after, before, "cjs_proxy_requests_total", code="4xx") == 3  # 404, 429, unknown host
    assert delta(after, before, "cjs_proxy_requests_total", code="5xx") == 1
    assert delta(after, before, "cjs_proxy_request_duration_seconds_count") == oks + 5
    assert delta(after, before, "cjs_proxy_upstream_duration_seconds_count") == oks + 3  # 429 and 400 never left
    assert delta(after, before, "cjs_proxy_upstream_errors_total", kind="connect") == 1
    assert delta(after, before, "cjs_proxy_upstream_errors_total") == 1
    assert delta(after, before, "cjs_proxy_retries_total") == 1  # the dead backend's frontend, read again
    assert delta(after, before, "cjs_proxy_route_lookups_total", result="redis") == oks + 5
    assert delta(after, before, "cjs_proxy_route_lookups_total", result="unknown") == 1
    assert delta(after, before, "cjs_proxy_redis_call_duration_seconds_count") == oks + 6
    assert delta(after, before, "cjs_proxy_redis_errors_total") == 0
    assert delta(after, before, "cjs_proxy_ratelimit_decisions_total", decision="allowed") == oks + 3
    assert delta(after, before, "cjs_proxy_ratelimit_decisions_total", decision="limited",
                 tier="tiny", limit="tiny") == 1
    assert total(after, "cjs_proxy_inflight_requests") == 0
    assert len({lab for (n, lab) in after if n == "cjs_proxy_worker_rss_bytes"}) == 2  # one per live worker

    lines = [json.loads(line) for line in monitored.access_log.read_text().splitlines()]
    assert all(COMBINED_FIELDS <= set(line) for line in lines)
    assert [line["limit"] for line in lines if line["vhost"] == "tiny-app"] == ["allowed", "limited"]


def test_dead_marks_and_panic_mode(make_proxy, rdb, host) -> None:
    proxy = make_proxy(**admin(server_workers=2, server_routeCache=False, server_retryOnError=3))
    rdb.rpush(f"frontend:{host}", "gone", *(f"http://127.0.0.1:{free_port()}" for _ in range(2)))
    before = settled(proxy)
    assert get(proxy, host).status_code == 502  # each refused, marked dead, the other tried
    assert get(proxy, host).status_code == 502  # both marked: tried anyway (panic mode)
    after = scrape_when(proxy, "cjs_proxy_request_duration_seconds_count", 2, before)
    assert delta(after, before, "cjs_proxy_backend_marked_dead_total") == 4
    assert delta(after, before, "cjs_proxy_panic_mode_total") == 2
    assert delta(after, before, "cjs_proxy_upstream_errors_total", kind="connect") == 4
    assert delta(after, before, "cjs_proxy_retries_total") == 4


def test_a_recycled_worker_keeps_its_counts_in_the_sum(make_proxy, rdb, backends, host) -> None:
    proxy = make_proxy(**admin(server_workers=2, server_maxRequests=5))
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    first = set(proxy.worker_pids())
    before = settled(proxy)
    for _ in range(30):
        assert get(proxy, host).status_code == 200
    until(lambda: not first & set(proxy.worker_pids()) and len(proxy.worker_pids()) == 2, 60,
          "both first workers replaced")
    after = scrape_when(proxy, "cjs_proxy_request_duration_seconds_count", 30, before)
    assert delta(after, before, "cjs_proxy_requests_total", code="2xx") == 30
    assert delta(after, before, "cjs_proxy_worker_recycles_total", reason="max_requests") >= 2
    live = {str(pid) for pid in proxy.worker_pids()}
    until(lambda: {dict(lab)["pid"] for (n, lab) in scrape(proxy) if n == "cjs_proxy_worker_rss_bytes"} <= live,
          30, "dead workers' RSS gone from the scrape")


def test_readyz_follows_redis(make_proxy, tmp_path) -> None:
    redis_server = RedisServer(tmp_path / "own-redis")
    try:
        proxy = make_proxy(redis_server.url, **admin(server_staleRouteTTL=0))
        ready = lambda: requests.get(admin_url(proxy, "/readyz"), timeout=10)  # noqa: E731
        assert ready().status_code == 200
        assert requests.get(admin_url(proxy, "/healthz"), timeout=10).status_code == 200
        redis_server.stop()
        until(lambda: ready().status_code == 503, 30, "/readyz 503 with redis stopped")
        assert "not ready: redis unreachable" in ready().text
        redis_server = RedisServer(tmp_path / "own-redis", port=redis_server.port)
        until(lambda: ready().status_code == 200, 30, "/readyz 200 with redis back")
    finally:
        redis_server.stop()


def test_the_public_port_routes_metrics_like_any_path(make_proxy, rdb, backends, host) -> None:
    proxy = make_proxy(**admin())
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    for path in ("/metrics", "/healthz", "/readyz"):
        routed = get(proxy, host, path)
        assert routed.status_code == 200 and "cjs_proxy_" not in routed.text
        assert json.loads(routed.text)["path"] == path  # the backend's echo: it was routed
        unknown = get(proxy, f"unknown-{host}", path)
        assert unknown.status_code == 400 and "cjs_proxy_" not in unknown.text
    assert "cjs_proxy_requests_total" in requests.get(admin_url(proxy, "/metrics"), timeout=10).text


def test_tunnels_are_a_live_gauge(make_proxy, rdb, ws_backend, host) -> None:
    proxy = make_proxy(**admin(server_workers=2))
    rdb.rpush(f"frontend:{host}", "ws-app", ws_backend.url)
    ws = websocket.create_connection(f"ws://127.0.0.1:{proxy.port}/echo", host=host, timeout=10)
    try:
        ws.send("hi")
        assert ws.recv() == "hi"
        scrape_when(proxy, "cjs_proxy_websocket_tunnels", 1)
    finally:
        ws.close()
    until(lambda: total(scrape(proxy), "cjs_proxy_websocket_tunnels") == 0, 30, "tunnel gauge back to 0")


def test_json_and_combined_lines_carry_the_same_values(make_proxy, rdb, backends, host) -> None:
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    combined = make_proxy()
    as_json = make_proxy(server_accessLogFormat="json")
    for proxy in (combined, as_json):
        assert get(proxy, host, "/status/404?x=1", **{"User-Agent": "probe/1"}).status_code == 404
    until(lambda: "probe/1" in combined.access_log.read_text() and "probe/1" in as_json.access_log.read_text(),
          10, "both lines written")
    line = next(x for x in combined.access_log.read_text().splitlines() if "probe/1" in x)
    record = next(json.loads(x) for x in as_json.access_log.read_text().splitlines() if "probe/1" in x)
    assert COMBINED_FIELDS <= set(record)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$", record["time"])
    expected = (f'{record["remote_addr"]} - - [', f'"GET /status/404?x=1 HTTP/1.1" 404 {record["bytes_sent"]} ',
                '"-" "probe/1" "app" ')
    assert all(part in line for part in expected)
    assert (record["method"], record["uri"], record["status"], record["vhost"]) == ("GET", "/status/404?x=1",
                                                                                   404, "app")
    assert record["upstream"] == backends[0].url.removeprefix("http://")


def test_every_metric_the_dashboard_queries_is_in_a_real_scrape(monitored, rdb, backends, host) -> None:
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    assert get(monitored, host).status_code == 200
    names = {name for name, _ in scrape(monitored)}
    dashboard = json.loads((ROOT / "etc" / "grafana-dashboard.json").read_text())
    queried = {m for panel in dashboard["panels"] for target in panel.get("targets", [])
               for m in re.findall(r"cjs_proxy_[a-z_]+", target["expr"])}
    assert queried and queried <= names, sorted(queried - names)
