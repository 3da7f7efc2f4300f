"""Active health checks: ``cjs-proxy health-check``, one per cluster is enough.

Every ``healthCheck.interval`` seconds it probes each distinct backend of every
frontend in Redis (HTTP GET on ``healthCheck.path`` for ``http://`` backends, a TCP
connect for others), writes the dead ids of each frontend to ``dead:<host>`` (with a
TTL, so marks vanish if the checker dies), clears them as soon as a backend answers
again, publishes newly dead backends on ``dead`` and keeps ``hchecker_ping`` fresh,
which tells the proxies (and Hipache's) to leave the dead sets to it.

Registered backends (``backends:<host>``) are probed alike; theirs marks go to
``deadurls:<host>`` by URL (their positions are not stable) and are not published on
``dead``, whose ids Hipache's tools read as indexes into ``frontend:``. Each round
also prunes expired registrations.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import gevent
import gevent.pool
from gevent import socket as gsocket

from cjs_proxy.admin.store import AdminStore
from cjs_proxy.exceptions import ProxyError
from cjs_proxy.pipeline.http1 import ResponseReader, encode_request_head
from cjs_proxy.pipeline.upstream import BackendConnection

log = logging.getLogger("cjs_proxy.admin.active_health")


@dataclass(frozen=True)
class ProbeSettings:
    path: str = "/"
    timeout: float = 2.0
    #: HTTP statuses at or above this mean the backend is unhealthy.
    unhealthy_status: int = 500


def probe(url: str, settings: ProbeSettings) -> bool:
    """True when the backend at ``url`` answers in time with a valid status below 5xx.

    The probe goes through the proxy's own backend layer (``upstream.BackendConnection``
    and the strict ``http1`` reader), so a backend is judged healthy by the same rules
    its answers are relayed by. Schemes other than http/https get a TCP connect.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    try:
        host, port = parts.hostname or "127.0.0.1", parts.port or (443 if secure else 80)
    except ValueError:  # a malformed URL in Redis (the proxy skips it too): never healthy
        return False
    try:
        with gevent.Timeout(settings.timeout):
            if parts.scheme not in ("http", "https"):
                gsocket.create_connection((host, port)).close()
                return True
            conn = BackendConnection(host, port, tls=ssl.create_default_context() if secure else None)
            sock = conn.connect(settings.timeout, url)
            try:
                sock.sendall(encode_request_head("GET", settings.path, [
                    ("Host", parts.netloc), ("User-Agent", "cjs-proxy-health-check"), ("Connection", "close")]))
                head = ResponseReader(sock, url).read_head("GET")
            finally:
                conn.close()
    except (ProxyError, OSError, gevent.Timeout):
        return False
    return head.status < settings.unhealthy_status


@dataclass
class RoundReport:
    frontends: int = 0
    backends: int = 0
    dead: int = 0
    newly_dead: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    seconds: float = 0.0


class HealthChecker:
    """Probes backends concurrently (gevent) and keeps the ``dead:`` sets in line."""

    def __init__(self, store: AdminStore, probe_settings: ProbeSettings, interval: float,
                 dead_ttl: int, concurrency: int = 500,
                 prober: Callable[[str, ProbeSettings], bool] = probe) -> None:
        self.store = store
        self.probe_settings = probe_settings
        self.interval = interval
        self.dead_ttl = dead_ttl
        self.pool = gevent.pool.Pool(concurrency)
        self.prober = prober
        #: host -> dead ids written last round; None until the first round wrote everything.
        self._dead: dict[str, set[int]] | None = None
        #: host -> dead registered URLs written last round.
        self._dead_urls: dict[str, set[str]] = {}

    def run_forever(self, rounds: int | None = None) -> None:
        done = 0
        while rounds is None or done < rounds:
            started = time.monotonic()
            report = self.run_round()
            log.info("health round: %d frontends, %d backends, %d dead, %.2fs",
                     report.frontends, report.backends, report.dead, report.seconds)
            done += 1
            gevent.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def run_round(self) -> RoundReport:
        started = time.monotonic()
        self.store.checker_ping(int(time.time()))
        frontends = self.store.all_frontends()
        registered = self.store.all_registered()
        urls = sorted({url for values in frontends.values() for url in values[1:]}
                      | {url for members in registered.values() for url in members})
        results = self.pool.imap(lambda url: self.prober(url, self.probe_settings), urls)
        healthy = dict(zip(urls, results, strict=True))
        report = RoundReport(frontends=len(frontends), backends=len(urls))
        previous = self._dead
        current: dict[str, set[int]] = {}
        writes: dict[str, set[int]] = {}
        announce: list[tuple[str, int, str, int]] = []
        for host, values in frontends.items():
            backends = values[1:]
            dead = {i for i, url in enumerate(backends) if not healthy[url]}
            current[host] = dead
            before = previous.get(host, set()) if previous is not None else None
            if dead or before is None or before != dead:
                writes[host] = dead  # dead ones each round: their TTL is renewed
            announce += [(host, i, backends[i], len(backends)) for i in sorted(dead - (before or set()))]
            report.recovered += [f"{host}#{i}" for i in (before or set()) - dead]
            report.dead += len(dead)
        self.store.set_dead(writes, self.dead_ttl)
        self._mark_registered(registered, healthy, report)
        for host, backend_id, url, count in announce:  # once the sets say so
            self.store.publish_dead(host, backend_id, url, count)
            report.newly_dead.append(f"{host}#{backend_id}")
        self._dead = current
        self.store.checker_ping(int(time.time()))
        report.seconds = time.monotonic() - started
        report.frontends = len(frontends.keys() | registered.keys())
        for item in report.newly_dead:
            log.warning("backend %s is dead", item)
        for item in report.recovered:
            log.info("backend %s recovered", item)
        return report

    def _mark_registered(self, registered: dict[str, list[str]], healthy: dict[str, bool],
                         report: RoundReport) -> None:
        """Write ``deadurls:<host>`` for the registered backends: the dead ones each round (their
        TTL is renewed), an emptied set once."""
        current = {host: {url for url in members if not healthy[url]} for host, members in registered.items()}
        writes = {host: dead for host, dead in current.items() if dead or self._dead_urls.get(host)}
        writes.update({host: set() for host in self._dead_urls.keys() - current.keys()})
        self.store.set_dead(writes, self.dead_ttl, by_url=True)
        for host, dead in current.items():
            before = self._dead_urls.get(host, set())
            report.newly_dead += [f"{host} {url}" for url in sorted(dead - before)]
            report.recovered += [f"{host} {url}" for url in sorted(before - dead)]
            report.dead += len(dead)
        self._dead_urls = {host: dead for host, dead in current.items() if dead}
