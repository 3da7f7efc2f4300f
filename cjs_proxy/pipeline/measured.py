"""The route store and route cache, measured: Redis round trips, failures and where routes come from.

These subclasses add the metrics at the boundary where Redis is called, so the
router, the health policy and the store itself stay unaware of metrics. A route
lookup is counted as ``redis`` (found) or ``unknown`` (no frontend) here, ``cache``
when the route cache answers, and ``stale`` by the pipeline (``Route.stale``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from cjs_proxy.pipeline.metrics import NoMetrics
from cjs_proxy.pipeline.router import Route, RouteCache
from cjs_proxy.pipeline.store import Frontend, LimitAnswer, RouteStore, StoreError

T = TypeVar("T")


class MeasuredStore(RouteStore):
    """A ``RouteStore`` whose request-path calls (lookup, limits, dead marks) are timed and counted."""

    metrics: NoMetrics = NoMetrics()

    @classmethod
    def measured(cls, store: RouteStore, metrics: NoMetrics) -> RouteStore:
        """``store`` itself with metrics off; else the same connections, measured."""
        if not metrics.enabled:
            return store
        measured = cls(store.reader, store.writer, store.keys.prefix, coalesce=store.coalesce)
        measured.metrics = metrics
        return measured

    def _timed(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, counted as one Redis call: its time, and whether it failed."""
        started = time.perf_counter()
        try:
            result = call(*args)
        except StoreError:
            self.metrics.redis_call(time.perf_counter() - started, True)
            raise
        self.metrics.redis_call(time.perf_counter() - started, False)
        return result

    def lookup(self, candidates: list[str], host: str,
               limit_args: tuple[str, ...] | None = None) -> tuple[Frontend, LimitAnswer | None] | None:
        found = self._timed(super().lookup, candidates, host, limit_args)
        self.metrics.route_lookup("unknown" if found is None else "redis")
        return found

    def limit(self, frontend_key: str, limit_args: tuple[str, ...]) -> LimitAnswer:
        return self._timed(super().limit, frontend_key, limit_args)

    def mark_dead(self, host: str, backend_id: int, backend_url: str, backend_count: int,
                  ttl: int) -> bool:
        written = self._timed(super().mark_dead, host, backend_id, backend_url, backend_count, ttl)
        self.metrics.marked_dead()
        return written

    def mark_dead_url(self, host: str, backend_url: str, ttl: int) -> None:
        self._timed(super().mark_dead_url, host, backend_url, ttl)
        self.metrics.marked_dead()


class MeasuredRouteCache(RouteCache):
    """A ``RouteCache`` that counts its hits as ``cache`` lookups."""

    metrics: NoMetrics = NoMetrics()

    def get(self, host: str) -> Route | None:
        route = super().get(host)
        if route is not None:
            self.metrics.route_lookup("cache")
        return route
