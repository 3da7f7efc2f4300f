"""The worker's metrics in-process: names, labels, the cardinality bound, the measured store."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cjs_proxy.exceptions import BackendClosed, BackendProtocolError, BackendTimeout, BackendUnavailable
from cjs_proxy.pipeline.measured import MeasuredRouteCache, MeasuredStore
from cjs_proxy.pipeline.metrics import (
    OTHER,
    FrontendLabels,
    Metrics,
    NoMetrics,
    build_metrics,
    limit_decision,
    metric_names,
    status_class,
    upstream_error_kind,
)
from cjs_proxy.pipeline.ratelimit import LimitVerdict
from cjs_proxy.pipeline.store import RouteStore, StoreError

#: The names of the issue (#13): the interface dashboards and alerts are written against.
EXPECTED = {
    "cjs_proxy_requests_total", "cjs_proxy_request_duration_seconds_bucket",
    "cjs_proxy_upstream_duration_seconds_bucket", "cjs_proxy_upstream_errors_total",
    "cjs_proxy_backend_marked_dead_total", "cjs_proxy_panic_mode_total", "cjs_proxy_retries_total",
    "cjs_proxy_route_lookups_total", "cjs_proxy_redis_errors_total",
    "cjs_proxy_redis_call_duration_seconds_bucket", "cjs_proxy_inflight_requests",
    "cjs_proxy_websocket_tunnels", "cjs_proxy_worker_recycles_total", "cjs_proxy_worker_rss_bytes",
}


def verdict(allowed: bool = True, shadow: bool = False, tier: str = "free", policy: str = "ip") -> LimitVerdict:
    return LimitVerdict(tier=tier, allowed=allowed, shadow_limited=shadow, policy=policy, quota=10, window=1,
                        remaining=1, reset=1, retry_after_ms=0, tier_known=True)


@pytest.fixture()
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_status_classes() -> None:
    assert [status_class(s) for s in (101, 200, 304, 404, 429, 499, 502, 600)] == \
        ["1xx", "2xx", "3xx", "4xx", "4xx", "4xx", "5xx", "5xx"]


def test_upstream_error_kinds() -> None:
    assert upstream_error_kind(BackendUnavailable("refused", before_request=True)) == "connect"
    assert upstream_error_kind(BackendTimeout("slow", before_request=True)) == "timeout"
    assert upstream_error_kind(BackendProtocolError("bad head")) == "protocol"
    assert upstream_error_kind(BackendClosed("closed")) == "reset"
    assert upstream_error_kind(ConnectionResetError()) == "reset"


def test_every_name_of_the_issue_is_exposed_before_any_traffic(registry: CollectorRegistry) -> None:
    Metrics(registry=registry)
    families = text_string_to_metric_families(generate_latest(registry).decode())
    assert EXPECTED <= metric_names(families)


def test_a_request_counts_its_class_durations_retries_and_decision(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry=registry)
    metrics.started()
    metrics.flush()
    assert value(registry, "cjs_proxy_inflight_requests") == 1
    metrics.finished(429, 0.02, None, "app", 0, verdict(allowed=False), "limited")
    metrics.started()
    metrics.finished(200, 0.3, 0.25, "app", 2, verdict(), "allowed")
    metrics.flush()
    assert value(registry, "cjs_proxy_inflight_requests") == 0
    assert value(registry, "cjs_proxy_requests_total", code="2xx") == 1
    assert value(registry, "cjs_proxy_requests_total", code="4xx") == 1
    assert value(registry, "cjs_proxy_request_duration_seconds_count") == 2
    assert value(registry, "cjs_proxy_upstream_duration_seconds_count") == 1
    assert value(registry, "cjs_proxy_upstream_duration_seconds_bucket", le="0.25") == 1
    assert value(registry, "cjs_proxy_retries_total") == 2
    assert value(registry, "cjs_proxy_ratelimit_decisions_total", tier="free", limit="ip", decision="limited") == 1
    assert value(registry, "cjs_proxy_ratelimit_decisions_total", tier="free", limit="ip", decision="allowed") == 1


def test_limiter_decisions_shadow_and_fallback(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry=registry)
    trial = verdict(shadow=True, tier="trial", policy="trial")
    metrics.finished(200, 0.01, 0.01, "app", 0, trial, limit_decision(trial, True, True))
    stale = limit_decision(None, True, True)  # a stale route: Redis could not decide
    metrics.finished(200, 0.01, 0.01, "app", 0, None, stale)
    metrics.finished(400, 0.01, None, None, 0, None, limit_decision(None, True, False))  # never routed
    metrics.finished(200, 0.01, 0.01, "app", 0, None, limit_decision(None, False, True))  # limits off
    metrics.flush()
    assert value(registry, "cjs_proxy_ratelimit_decisions_total", tier="trial", limit="trial",
                 decision="shadow") == 1
    assert value(registry, "cjs_proxy_ratelimit_decisions_total", tier="-", limit="-", decision="fallback") == 1


def test_per_frontend_labels_are_bounded(registry: CollectorRegistry) -> None:
    metrics = Metrics(per_frontend=True, max_frontends=2, registry=registry)
    for name in ("a", "b", "c", "d", "a"):
        metrics.finished(200, 0.01, 0.005, name, 0)
    metrics.finished(400, 0.01, None, None, 0)
    metrics.flush()
    assert value(registry, "cjs_proxy_requests_total", code="2xx", frontend="a") == 2
    assert value(registry, "cjs_proxy_requests_total", code="2xx", frontend=OTHER) == 2
    assert value(registry, "cjs_proxy_requests_total", code="4xx", frontend="-") == 1
    assert value(registry, "cjs_proxy_request_duration_seconds_count", frontend=OTHER) == 2
    assert value(registry, "cjs_proxy_upstream_duration_seconds_count", frontend="b") == 1
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    frontends = {s.labels.get("frontend") for f in families for s in f.samples} - {None}
    assert frontends == {"a", "b", OTHER, "-"}


def test_limit_decisions() -> None:
    assert limit_decision(verdict(), False, True) == "-"
    assert limit_decision(verdict(), True, False) == "-"
    assert limit_decision(None, True, True) == "fallback"
    assert limit_decision(verdict(allowed=False), True, True) == "limited"
    assert limit_decision(verdict(shadow=True), True, True) == "shadow"
    assert limit_decision(verdict(), True, True) == "allowed"


def test_frontend_labels_keep_the_first_ones_seen() -> None:
    labels = FrontendLabels(1)
    assert [labels.label(x) for x in ("x", "y", "x")] == ["x", OTHER, "x"]


def test_events(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry=registry)
    metrics.upstream_error(BackendTimeout("slow"))
    metrics.panic()
    metrics.marked_dead()
    metrics.route_lookup("stale")
    metrics.redis_call(0.002, failed=True)
    metrics.tunnel(+1)
    metrics.tunnel(+1)
    metrics.tunnel(-1)
    metrics.recycled("memory")  # flushes everything pending: the worker is leaving
    metrics.rss(123456)
    assert value(registry, "cjs_proxy_upstream_errors_total", kind="timeout") == 1
    assert value(registry, "cjs_proxy_upstream_errors_total", kind="connect") == 0
    assert value(registry, "cjs_proxy_panic_mode_total") == 1
    assert value(registry, "cjs_proxy_backend_marked_dead_total") == 1
    assert value(registry, "cjs_proxy_route_lookups_total", result="stale") == 1
    assert value(registry, "cjs_proxy_redis_errors_total") == 1
    assert value(registry, "cjs_proxy_redis_call_duration_seconds_count") == 1
    assert value(registry, "cjs_proxy_websocket_tunnels") == 1
    assert value(registry, "cjs_proxy_worker_recycles_total", reason="memory") == 1
    assert value(registry, "cjs_proxy_worker_rss_bytes") == 123456


def test_no_metrics_takes_every_call() -> None:
    metrics = build_metrics(False, True, 10)
    assert type(metrics) is NoMetrics and not metrics.enabled
    metrics.started()
    metrics.finished(200, 0.1, 0.1, "x", 1, None, "fallback")
    metrics.upstream_error(BackendTimeout())
    metrics.route_lookup("cache")
    metrics.redis_call(0.1, True)
    metrics.recycled("memory")


# ------------------------------------------------------------- measured store


class FakeRedis:
    """Answers the route script with ``reply``, or raises ``error``."""

    def __init__(self, reply: Any = None, error: Exception | None = None) -> None:
        self.reply = reply
        self.error = error

    def evalsha(self, *args: Any) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply


def measured_store(client: FakeRedis, metrics: Metrics) -> RouteStore:
    return MeasuredStore.measured(RouteStore(client, client), metrics)  # type: ignore[arg-type]


def test_measured_store_counts_found_unknown_and_failed_lookups(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry=registry)
    found = measured_store(FakeRedis([1, [b"app", b"http://a:1"], [], 0, [[], -1, [], b"", []]]), metrics)
    assert found.lookup(["x.test", "*"], "x.test") is not None
    unknown = measured_store(FakeRedis([0, [], []]), metrics)
    assert unknown.lookup(["y.test", "*"], "y.test") is None
    broken = measured_store(FakeRedis(error=redis.exceptions.ConnectionError("down")), metrics)
    with pytest.raises(StoreError):
        broken.lookup(["z.test", "*"], "z.test")
    metrics.flush()
    assert value(registry, "cjs_proxy_route_lookups_total", result="redis") == 1
    assert value(registry, "cjs_proxy_route_lookups_total", result="unknown") == 1
    assert value(registry, "cjs_proxy_redis_errors_total") == 1
    assert value(registry, "cjs_proxy_redis_call_duration_seconds_count") == 3


def test_measured_store_counts_dead_marks(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry=registry)
    store = measured_store(FakeRedis(1), metrics)
    assert store.mark_dead("x.test", 0, "http://a:1", 2, 30) is True
    metrics.flush()
    assert value(registry, "cjs_proxy_backend_marked_dead_total") == 1


def test_metrics_off_leaves_the_store_as_it_is() -> None:
    store = RouteStore(FakeRedis(), FakeRedis())  # type: ignore[arg-type]
    assert MeasuredStore.measured(store, NoMetrics()) is store


class AlwaysChanged:
    def __init__(self, changed: bool) -> None:
        self.value = changed

    def changed(self) -> bool:
        return self.value


def test_measured_cache_counts_hits_only(registry: CollectorRegistry) -> None:
    from cjs_proxy.pipeline.router import Route
    from cjs_proxy.pipeline.store import Frontend

    cache = MeasuredRouteCache(AlwaysChanged(False))  # type: ignore[arg-type]
    cache.metrics = Metrics(registry=registry)
    assert cache.get("x.test") is None
    cache.put(Route("x.test", Frontend("x.test", "app", ("http://a:1",), frozenset())), cache.generation)
    assert cache.get("x.test") is not None
    cache.metrics.flush()
    assert value(registry, "cjs_proxy_route_lookups_total", result="cache") == 1


def test_values_reach_prometheus_at_flush_in_the_buckets_observe_would_pick(registry: CollectorRegistry) -> None:
    """The hot path only accumulates; a flush writes what ``Histogram.observe`` would have written."""
    from prometheus_client import Histogram

    from cjs_proxy.pipeline.metrics import REQUEST_BUCKETS

    metrics = Metrics(registry=registry)
    reference = Histogram("reference_seconds", "same values, observed directly", registry=registry,
                          buckets=REQUEST_BUCKETS)
    samples = [0.0, 0.001, 0.0010001, 0.05, 0.2, 60.0, 61.0, 1e9]
    for seconds in samples:
        metrics.started()
        metrics.finished(200, seconds, None, "app", 0)
        reference.observe(seconds)
    assert value(registry, "cjs_proxy_requests_total", code="2xx") == 0  # nothing written yet
    metrics.flush()
    assert value(registry, "cjs_proxy_requests_total", code="2xx") == len(samples)
    for bound in [*REQUEST_BUCKETS, float("inf")]:
        le = "+Inf" if bound == float("inf") else repr(bound)
        assert value(registry, "cjs_proxy_request_duration_seconds_bucket", le=le) == \
            value(registry, "reference_seconds_bucket", le=le), le
    assert value(registry, "cjs_proxy_request_duration_seconds_sum") == pytest.approx(sum(samples))
    assert value(registry, "cjs_proxy_inflight_requests") == 0
    metrics.flush()  # nothing pending: nothing added twice
    assert value(registry, "cjs_proxy_requests_total", code="2xx") == len(samples)
