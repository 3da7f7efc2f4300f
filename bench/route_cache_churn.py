"""Route lookups that reach Redis while registrations of other hosts keep renewing.

``.venv/bin/python bench/route_cache_churn.py [--rev REV] [--registrations 100] [--ttl 3] [--duration 10]``

Starts an nginx backend, a redis-server and cjs-proxy (2 workers, route cache on, no
rate limits; the work tree's code, then REV's when given), registers ``--registrations``
backends on as many other hosts and renews each every ttl/3 seconds (as ``cjs-proxy
register`` does, spread evenly over the period, from one thread through
``AdminStore.register``), while two clients on keep-alive connections send a steady
100 req/s each to one static host (a ``frontend:`` list). Route lookups reaching Redis
are the EVALSHA calls Redis counted (``INFO commandstats``) minus the registrations'
own. Prints one Markdown table. Counts, not speed: a busy machine changes little.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests
from run import export_revision
from servers import ROOT, Backend, Proxy, RedisServer

from cjs_proxy.admin.store import AdminStore
from tests.harness import Renewals

HOST = "static.bench.test"
#: Requests per second each client sends (two clients).
CLIENT_RATE = 100


def client(url: str, seconds: float, sent: list[int], failed: list[int]) -> None:
    """A steady ``CLIENT_RATE`` req/s to the static host on one keep-alive connection."""
    with requests.Session() as session:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            response = session.get(url, headers={"Host": HOST}, timeout=30)
            sent.append(1)
            if response.status_code != 200:
                failed.append(response.status_code)
            time.sleep(max(0.0, len(sent) / 2 / CLIENT_RATE - elapsed))


def warm(url: str, renewing: Renewals) -> None:
    """Requests on new connections until 20 in a row needed no lookup: both workers' feeds
    are connected and their caches hold the route (at most 1,000 requests)."""
    quiet = 0
    for _ in range(1000):
        before = renewing.lookups()
        requests.get(url, headers={"Host": HOST}, timeout=30)
        quiet = quiet + 1 if renewing.lookups() == before else 0
        if quiet == 20:
            return
        time.sleep(0.01)
    raise RuntimeError("the route was never served from the cache")


def measure_source(source: Path, work: Path, registrations: int, ttl: int, seconds: float) -> dict[str, float]:
    started: list = []
    try:
        backend = Backend(work / "backend", workers=1)
        started.append(backend)
        store = RedisServer(work / "redis")
        started.append(store)
        rdb = redis.Redis.from_url(store.url)
        rdb.rpush(f"frontend:{HOST}", "static", backend.url)
        proxy = Proxy("cjs-proxy", work / "proxy", store.url, workers=2, source=source)
        started.append(proxy)
        admin = AdminStore.from_urls(store.url, store.url, 5, max_connections=2)
        hosts = [f"registered-{i}.bench.test" for i in range(registrations)]
        # Each renewed every ttl/3 s, as `cjs-proxy register` does; bounded whatever happens to the caller.
        renewing = Renewals(admin, rdb, backend.url, hosts, ttl, ttl / 3, limit=600)
        warm(proxy.url, renewing)
        renewing.start()
        before, renewed = renewing.lookups(), renewing.calls
        sent: list[int] = []
        failed: list[int] = []
        clients = [threading.Thread(target=client, args=(proxy.url, seconds, sent, failed)) for _ in range(2)]
        begun = time.monotonic()
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(seconds + 60)
        elapsed = time.monotonic() - begun
        lookups, renewals = renewing.lookups() - before, renewing.calls - renewed
        renewing.stop()
        admin.reader.close()
        return {"requests": len(sent), "failed": len(failed), "seconds": elapsed, "lookups": lookups,
                "renewals": renewals}
    finally:
        for process in reversed(started):
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rev", help="also measure this git revision (exported), before the work tree")
    parser.add_argument("--registrations", type=int, default=100)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cjs-churn-") as tmp:
        work = Path(tmp)
        sources = [(opts.rev, export_revision(opts.rev, work / "src"))] if opts.rev else []
        sources.append(("work tree", ROOT))
        for index, (name, source) in enumerate(sources):
            result = measure_source(source, work / f"run{index}", opts.registrations, opts.ttl, opts.duration)
            rows.append((name, result))
    print(f"{opts.registrations} registrations renewed every {opts.ttl / 3:.1f} s; two clients, "
          f"{2 * CLIENT_RATE} req/s to a static host\n")
    print("| code | requests | failed | renewals/s | route lookups reaching Redis/s | share of requests |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['requests']:.0f} | {r['failed']:.0f} | {r['renewals'] / r['seconds']:.0f} | "
              f"{r['lookups'] / r['seconds']:.1f} | {r['lookups'] / max(1, r['requests']):.1%} |")


if __name__ == "__main__":
    main()
