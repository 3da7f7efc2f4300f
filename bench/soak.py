"""Worker memory over a long run: RSS of each cjs-proxy worker across ~1M proxied requests.

Issue 6 asks that worker memory stay flat in normal operation. This starts the nginx
backend, a private Redis and cjs-proxy (2 workers, route cache and access log on, no
recycling), runs wrk in 30 s segments (50 keep-alive connections) until 1,000,000
requests or 10 minutes, and records each worker's RSS after every segment. Writes
``bench/results/<date>-soak.md``. Loopback only, bounded in count and time.
Run: ``.venv/bin/python bench/soak.py`` (needs wrk and nginx: ``make bench`` installs them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis
from measure import rss_kib, run_wrk
from servers import ROOT, Backend, Proxy, RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--segment", type=float, default=30)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cjs-soak-"))
    backend, store = Backend(workdir / "backend", workers=1), RedisServer(workdir / "redis")
    proxy = Proxy("cjs-proxy", workdir / "proxy", store.url, workers=2,
                  extra={"server": {"maxRequestsPerConnection": 0}})
    rows: list[tuple[int, float, list[int]]] = []
    try:
        redis.Redis(port=store.port).rpush("frontend:soak.test", "soak", backend.url)
        workers = proxy.workers()
        rows.append((0, 0.0, [rss_kib(pid) for pid in workers]))
        started, total = time.monotonic(), 0
        while total < args.requests and time.monotonic() - started < args.max_seconds:
            result = run_wrk(f"{proxy.url}/", "soak.test", connections=50, threads=2, duration=args.segment)
            total += result.requests
            rows.append((total, time.monotonic() - started, [rss_kib(pid) for pid in workers]))
            print(f"{total:>9,} requests  {rows[-1][1]:6.0f} s  RSS MiB: "
                  + " ".join(f"{kib / 1024:.1f}" for kib in rows[-1][2]), flush=True)
            if proxy.workers() != workers:
                raise SystemExit("a worker was replaced during the soak; RSS figures would mix processes")
    finally:
        proxy.stop()
        backend.stop()
        store.stop()
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    lines = [f"# cjs-proxy worker RSS over {rows[-1][0]:,} requests ({stamp})", "",
             "| requests | seconds | " + " | ".join(f"worker {i + 1} RSS MiB" for i in range(len(rows[0][2]))) + " |",
             "|--:|--:|" + "--:|" * len(rows[0][2])]
    lines += [f"| {n:,} | {s:.0f} | " + " | ".join(f"{kib / 1024:.1f}" for kib in rss) + " |" for n, s, rss in rows]
    out = ROOT / "bench" / "results" / f"{stamp}-soak.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
