"""CPU per request with metrics on and off: two otherwise identical proxies, loaded in turn.

Both are cjs-proxy with 2 workers in front of the same nginx backend and Redis; "off"
has ``admin.bind: []`` (``NoMetrics``), "on" the admin listener (the default). wrk
loads one, then the other, ``--rounds`` times (interleaved, so drift on a shared
machine hits both alike); each run's CPU (master + workers, /proc) is divided by the
requests wrk completed. Prints a Markdown table and writes bench/results/<date>-metrics.json.

    .venv/bin/python bench/metrics_cost.py --rounds 5 --duration 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import measure
import redis
from servers import ROOT, Backend, Proxy, RedisServer

HOST = "bench.test"


def one_run(proxy: Proxy, duration: float, connections: int, keepalive: bool) -> dict[str, float]:
    before = measure.tree_cpu_seconds(proxy.pid)
    headers = () if keepalive else ("Connection: close",)
    result = measure.run_wrk(proxy.url + "/", HOST, connections=connections, threads=2, duration=duration,
                             headers=headers)
    cpu = measure.tree_cpu_seconds(proxy.pid) - before
    return {"requests": result.requests, "rps": result.rps, "cpu_us_per_request": cpu / result.requests * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    rundir = ROOT / "var" / "bench" / f"{stamp}-metrics"
    started = []
    try:
        backend = Backend(rundir / "backend")
        started.append(backend)
        redis_server = RedisServer(rundir / "redis")
        started.append(redis_server)
        redis.Redis.from_url(redis_server.url).rpush(f"frontend:{HOST}", "bench", backend.url)
        proxies = {"off": Proxy("metrics off", rundir / "off", redis_server.url, extra={"admin": {"bind": []}}),
                   "on": Proxy("metrics on", rundir / "on", redis_server.url)}
        started.extend(proxies.values())
        runs: dict[str, dict[str, list[dict[str, float]]]] = {"keepalive": {"off": [], "on": []},
                                                               "close": {"off": [], "on": []}}
        for _ in range(args.rounds):
            for scenario in runs:
                for name, proxy in proxies.items():
                    runs[scenario][name].append(one_run(proxy, args.duration, args.connections,
                                                        scenario == "keepalive"))
    finally:
        for process in reversed(started):
            process.stop()
    summary = {}
    print("| scenario | metrics | req/s (median) | CPU µs/request (median) | runs |")
    print("|---|---|---|---|---|")
    for scenario, by_name in runs.items():
        for name, results in by_name.items():
            cpu = statistics.median(r["cpu_us_per_request"] for r in results)
            rps = statistics.median(r["rps"] for r in results)
            summary[f"{scenario}/{name}"] = {"cpu_us_per_request": cpu, "rps": rps, "runs": results}
            print(f"| {scenario} | {name} | {rps:.0f} | {cpu:.1f} | {len(results)} |")
        off, on = summary[f"{scenario}/off"]["cpu_us_per_request"], summary[f"{scenario}/on"]["cpu_us_per_request"]
        summary[f"{scenario}/cost_percent"] = (on - off) / off * 100
        print(f"| {scenario} | cost | | **{(on - off) / off * 100:+.1f}%** CPU per request | |")
    out = ROOT / "bench" / "results" / f"{stamp}-metrics.json"
    out.write_text(json.dumps({"args": vars(args), "summary": summary}, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
