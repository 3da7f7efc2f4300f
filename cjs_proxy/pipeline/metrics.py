"""Prometheus metrics of one worker: the metric objects, built once after the fork and passed in.

The names are the operator's interface (README "Monitoring"; ``etc/grafana-dashboard.json``
queries them), so they are declared here once and never built from strings elsewhere.
Under gunicorn the master points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before
any worker starts (``cjs_proxy.lifecycle.metrics_dir``): each worker then writes its
values to its own memory-mapped file and the admin listener sums them at scrape time,
so the counts of a recycled worker stay in the sum.

The request path calls a few methods per request (``started``, ``finished``), and
these only add to plain numbers in this process: writing a multiprocess value costs
about 2 µs (a lock, a pid check, a write to the mapped file), and a request touches
about ten of them, which measured as 18% more CPU per request on the keep-alive bench.
``flush()`` writes what accumulated to prometheus_client's values; the worker calls it
every ``FLUSH_INTERVAL`` seconds and once more when it exits, so a scrape lags by at
most that much and a recycled worker's counts are all in the sum (one killed with
SIGKILL loses at most its last interval). Label children are looked up once and kept.
With metrics off (``admin.bind: []``), ``NoMetrics`` does nothing at the same call sites.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cjs_proxy.exceptions import BackendProtocolError, BackendTimeout, BackendUnavailable

#: Request and backend latencies, in seconds: sub-millisecond proxying up to long polls.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: One Redis round trip (the route script, a dead mark): loopback to a slow link.
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset", "protocol")
LOOKUP_RESULTS = ("cache", "redis", "stale", "unknown")
LIMIT_DECISIONS = ("allowed", "limited", "shadow", "fallback", "local-allowed", "local-limited", "local-shadow")
RECYCLE_REASONS = ("max_requests", "memory", "reload")
#: Seconds between two writes of a worker's accumulated values (the worker's loop calls ``flush``).
FLUSH_INTERVAL = 1.0
#: The label of every frontend past ``metrics.maxFrontends`` (and of requests with no route).
OTHER = "other"
NO_FRONTEND = "-"


def status_class(status: int) -> str:
    """``2xx`` for 200..299; anything outside 100..599 (none expected) counts as ``5xx``."""
    first = status // 100
    return STATUS_CLASSES[first - 1] if 1 <= first <= 5 else "5xx"


def upstream_error_kind(error: BaseException) -> str:
    """The ``kind`` label of a backend failure: what an operator would look for first.

    ``connect``: refused or unreachable before any byte was sent; ``timeout``: no
    connection or no answer in time; ``protocol``: an answer that is not strict HTTP;
    ``reset``: a connection broken after the request went out (mid-answer too).
    """
    if isinstance(error, BackendTimeout):
        return "timeout"
    if isinstance(error, BackendProtocolError):
        return "protocol"
    if isinstance(error, BackendUnavailable) and error.before_request:
        return "connect"
    return "reset"


def limit_decision(verdict: Any, limiter_on: bool, routed: bool) -> str:
    """The limiter's decision on a request, for the access log and the decisions counter.

    ``-`` when limits are off or the request was never routed; ``fallback`` when Redis
    could not decide (a stale route, ``rateLimit.onError`` open or closed applied);
    ``local-...`` when this worker decided in its place (``onError: local``). ``verdict``
    is the request's ``LimitVerdict`` (tier, allowed, shadow_limited, policy, local).
    """
    if not limiter_on or not routed:
        return "-"
    if verdict is None:
        return "fallback"
    decision = "shadow" if verdict.shadow_limited else "allowed" if verdict.allowed else "limited"
    return f"local-{decision}" if verdict.local else decision


class FrontendLabels:
    """Frontend identifiers as label values, at most ``limit`` of them in this worker.

    Identifiers are tenant-chosen text in Redis: an unbounded label would let the
    number of series (and the scrape, and Prometheus's memory) grow with the number of
    apps. The first ``limit`` identifiers seen keep their own series; later ones share
    ``other``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.known: dict[str, str] = {}

    def label(self, identifier: str) -> str:
        found = self.known.get(identifier)
        if found is not None:
            return found
        if len(self.known) >= self.limit:
            return OTHER
        self.known[identifier] = identifier
        return identifier


class NoMetrics:
    """Metrics off: the same calls as ``Metrics``, doing nothing (no file, no lock)."""

    enabled = False

    def started(self) -> None:
        """A request entered the pipeline (in-flight gauge)."""

    def finished(self, status: int, duration: float, upstream_time: float | None, frontend: str | None,
                 retries: int, verdict: Any = None, decision: str = "-") -> None:
        """A request is logged: its status class, durations, retries and limiter decision.

        ``decision`` is ``limit_decision``'s, taken when the request was first routed (a
        retry reads the route again, without limits); ``verdict`` names its tier and limit.
        """

    def upstream_error(self, error: BaseException) -> None:
        """A backend failed (connect, timeout, reset, protocol)."""

    def panic(self) -> None:
        """A backend marked dead was chosen because all of them were (panic mode)."""

    def marked_dead(self) -> None:
        """This worker marked a backend dead in Redis."""

    def route_lookup(self, result: str) -> None:
        """Where a route came from: ``cache``, ``redis``, ``stale`` or ``unknown``."""

    def redis_call(self, seconds: float, failed: bool) -> None:
        """One Redis round trip of the request path, and whether it failed."""

    def tunnel(self, delta: int) -> None:
        """A WebSocket tunnel opened (+1) or closed (-1)."""

    def recycled(self, reason: str) -> None:
        """This worker is being replaced (``max_requests``, ``memory``)."""

    def rss(self, value: int) -> None:
        """This worker's resident memory, sampled now and then."""

    def flush(self) -> None:
        """Write what accumulated since the last flush where a scrape reads it."""


class Metrics(NoMetrics):
    """The metrics of one worker process; ``registry`` is for in-process tests only.

    Under gunicorn nothing is registered in the worker: the admin listener reads every
    worker's files (``prometheus_client.multiprocess``).
    """

    enabled = True

    def __init__(self, per_frontend: bool = False, max_frontends: int = 100,
                 registry: CollectorRegistry | None = None) -> None:
        self.frontends = FrontendLabels(max_frontends) if per_frontend else None
        by_frontend = ("frontend",) if per_frontend else ()
        self.requests = Counter("cjs_proxy_requests", "Requests answered, by status class.",
                                ("code", *by_frontend), registry=registry)
        self.request_duration = Histogram("cjs_proxy_request_duration_seconds",
                                          "Time from the request's arrival to its last byte sent.",
                                          by_frontend, registry=registry, buckets=REQUEST_BUCKETS)
        self.upstream_duration = Histogram("cjs_proxy_upstream_duration_seconds",
                                           "Time the backend took to answer (its head).",
                                           by_frontend, registry=registry, buckets=REQUEST_BUCKETS)
        self.upstream_errors = Counter("cjs_proxy_upstream_errors", "Backend failures, by kind.",
                                       ("kind",), registry=registry)
        self.limit_decisions = Counter("cjs_proxy_ratelimit_decisions", "Rate limiter decisions.",
                                       ("tier", "limit", "decision"), registry=registry)
        self.dead_marks = Counter("cjs_proxy_backend_marked_dead", "Backends this proxy marked dead.",
                                  registry=registry)
        self.panics = Counter("cjs_proxy_panic_mode", "Requests sent to a dead backend because all were.",
                              registry=registry)
        self.retries = Counter("cjs_proxy_retries", "Requests sent again to another backend.", registry=registry)
        self.lookups = Counter("cjs_proxy_route_lookups", "Route lookups, by where the answer came from.",
                               ("result",), registry=registry)
        self.redis_errors = Counter("cjs_proxy_redis_errors", "Redis calls that failed.", registry=registry)
        self.redis_duration = Histogram("cjs_proxy_redis_call_duration_seconds", "Redis round trips.",
                                        registry=registry, buckets=REDIS_BUCKETS)
        self.inflight = Gauge("cjs_proxy_inflight_requests", "Requests in progress.",
                              registry=registry, multiprocess_mode="livesum")
        self.tunnels = Gauge("cjs_proxy_websocket_tunnels", "Open WebSocket tunnels.",
                             registry=registry, multiprocess_mode="livesum")
        self.recycles = recycles_counter(registry)
        self.rss_bytes = Gauge("cjs_proxy_worker_rss_bytes", "Resident memory of each live worker.",
                               registry=registry, multiprocess_mode="liveall")
        self._resolve_children()
        #: Not yet flushed: counter children -> amount; histogram children -> [sum, per-bucket counts...].
        self._counts: dict[Any, float] = {}
        self._observed: dict[Any, list[float]] = {}
        self._inflight = 0
        self._tunnels = 0

    def _resolve_children(self) -> None:
        """Every fixed label value up front: the hot path indexes dicts, and a scrape
        shows each series at 0 before it first happens (dashboards and alerts need them)."""
        self._by_class: dict[Any, Any] = {}
        if self.frontends is None:
            self._by_class = {c: self.requests.labels(c) for c in STATUS_CLASSES}
        self._durations: dict[str, tuple[Any, Any]] = {}
        self._errors = {k: self.upstream_errors.labels(k) for k in UPSTREAM_ERROR_KINDS}
        self._lookups = {r: self.lookups.labels(r) for r in LOOKUP_RESULTS}
        self._recycles = {r: self.recycles.labels(r) for r in RECYCLE_REASONS}
        self._decisions: dict[tuple[str, str, str], Any] = {}
        self._fallback = self.limit_decisions.labels("-", "-", "fallback")

    # ---------------------------------------------------------------- per request

    def _add(self, child: Any, amount: float = 1.0) -> None:
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + amount

    def _observe(self, child: Any, value: float) -> None:
        """A histogram observation, as ``Histogram.observe`` would count it (``le`` buckets, inclusive)."""
        pending = self._observed.get(child)
        if pending is None:
            pending = self._observed[child] = [0.0] * (len(child._upper_bounds) + 1)
        pending[0] += value
        pending[1 + bisect_left(child._upper_bounds, value)] += 1

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for child, amount in counts.items():
            child.inc(amount)
        observed, self._observed = self._observed, {}
        for child, pending in observed.items():
            child._sum.inc(pending[0])
            for bucket, count in zip(child._buckets, pending[1:], strict=True):
                if count:
                    bucket.inc(count)
        if self._inflight:
            self.inflight.inc(self._inflight)
            self._inflight = 0
        if self._tunnels:
            self.tunnels.inc(self._tunnels)
            self._tunnels = 0

    def started(self) -> None:
        self._inflight += 1

    def finished(self, status: int, duration: float, upstream_time: float | None, frontend: str | None,
                 retries: int, verdict: Any = None, decision: str = "-") -> None:
        self._inflight -= 1
        code = status_class(status)
        label = NO_FRONTEND
        if self.frontends is None:
            self._add(self._by_class[code])
        else:
            label = self.frontends.label(frontend) if frontend is not None else NO_FRONTEND
            self._add(self._child(self._by_class, (code, label), self.requests))
        request_h, upstream_h = self._duration_children(label)
        self._observe(request_h, duration)
        if upstream_time is not None:
            self._observe(upstream_h, upstream_time)
        if retries:
            self._add(self.retries, retries)
        if decision != "-":
            self._decision(verdict, decision)

    def _duration_children(self, label: str) -> tuple[Any, Any]:
        found = self._durations.get(label)
        if found is None:
            if self.frontends is None:
                found = (self.request_duration, self.upstream_duration)
            else:
                found = (self.request_duration.labels(label), self.upstream_duration.labels(label))
            self._durations[label] = found
        return found

    @staticmethod
    def _child(cache: dict[Any, Any], key: tuple[str, ...], metric: Any) -> Any:
        found = cache.get(key)
        if found is None:
            found = cache[key] = metric.labels(*key)
        return found

    def _decision(self, verdict: Any, decision: str) -> None:
        if verdict is None:  # ``fallback``: Redis could not decide, so there is no tier either
            self._add(self._fallback)
            return
        # Tier and policy names come from the config file, not from clients: bounded.
        self._add(self._child(self._decisions, (verdict.tier, verdict.policy, decision), self.limit_decisions))

    # ---------------------------------------------------------------- events

    def upstream_error(self, error: BaseException) -> None:
        self._add(self._errors[upstream_error_kind(error)])

    def panic(self) -> None:
        self._add(self.panics)

    def marked_dead(self) -> None:
        self._add(self.dead_marks)

    def route_lookup(self, result: str) -> None:
        self._add(self._lookups[result])

    def redis_call(self, seconds: float, failed: bool) -> None:
        self._observe(self.redis_duration, seconds)
        if failed:
            self._add(self.redis_errors)

    def tunnel(self, delta: int) -> None:
        self._tunnels += delta

    def recycled(self, reason: str) -> None:
        """Written at once, with everything pending: the worker is on its way out."""
        self._add(self._recycles[reason])
        self.flush()

    def rss(self, value: int) -> None:
        self.rss_bytes.set(value)


def recycles_counter(registry: CollectorRegistry | None = None) -> Counter:
    """``cjs_proxy_worker_recycles_total``: workers count their own, the master counts reloads."""
    return Counter("cjs_proxy_worker_recycles", "Workers replaced, by reason.", ("reason",), registry=registry)


def build_metrics(enabled: bool, per_frontend: bool, max_frontends: int) -> NoMetrics:
    """The worker's metrics: ``Metrics`` when an admin listener can scrape them, else ``NoMetrics``."""
    return Metrics(per_frontend, max_frontends) if enabled else NoMetrics()


def metric_names(families: Iterable[Any]) -> set[str]:
    """Every sample name in parsed families (``_total``, ``_bucket``... included): for checks."""
    return {sample.name for family in families for sample in family.samples}
