"""What rate limits cost per request: the same proxy with limits off and on, loaded in turn.

All proxies run 2 workers in front of one nginx backend and one Redis: "off" has rate
limits off (routes come from the route cache), "on" every limit on (tier, per IP, global
per IP) at rates never reached, so the whole Lua path runs and nothing is refused. With
``--rev REV``, "on@REV" runs that git revision's code with the same limits, to compare a
change against its parent in the same run. wrk loads each in turn, ``--rounds`` times
(interleaved, so drift on a shared machine hits all alike). Reported per proxy: medians of
req/s, CPU per request (master + workers, /proc), Redis CPU per request, and how many
script calls Redis got per read from a client socket (1.0 = one round trip each; above 1,
calls were pipelined together). Writes bench/results/<date>-limits.json.

    .venv/bin/python bench/limits_cost.py --rounds 5 --duration 5 [--rev HEAD~1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import measure
import redis
from run import RATE_LIMITED, export_revision
from servers import ROOT, Backend, Proxy, RedisServer

HOST = "bench.test"


def redis_counters(client: redis.Redis) -> tuple[int, int]:
    """(reads from client sockets, EVALSHA calls) so far: their ratio is the batch size."""
    reads = int(client.info("stats").get("total_reads_processed", 0))
    evalsha = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    return reads, int(evalsha)


def one_run(proxy: Proxy, redis_server: RedisServer, client: redis.Redis, duration: float,
            connections: int, keepalive: bool) -> dict[str, float]:
    cpu_before, redis_before = measure.tree_cpu_seconds(proxy.pid), measure.cpu_seconds(redis_server.pid)
    reads_before, calls_before = redis_counters(client)
    result = measure.run_wrk(proxy.url + "/", HOST, connections=connections, threads=min(2, connections),
                             duration=duration, headers=() if keepalive else ("Connection: close",))
    reads_after, calls_after = redis_counters(client)
    requests = max(1, result.requests)
    calls = calls_after - calls_before
    return {"requests": result.requests, "rps": result.rps, "errors": result.errors,
            "cpu_us_per_request": (measure.tree_cpu_seconds(proxy.pid) - cpu_before) / requests * 1e6,
            "redis_cpu_us_per_request": (measure.cpu_seconds(redis_server.pid) - redis_before) / requests * 1e6,
            # Other clients (the invalidation feeds, this script) read too: a lower bound.
            "calls_per_read": calls / max(1, reads_after - reads_before) if calls else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rev", help="also run this git revision with limits on, as on@REV")
    parser.add_argument("--close", action="store_true", help="also measure with Connection: close")
    args = parser.parse_args()
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    rundir = ROOT / "var" / "bench" / f"{stamp}-limits"
    started: list[Any] = []
    scenarios = ["keepalive", "close"] if args.close else ["keepalive"]
    try:
        backend = Backend(rundir / "backend")
        started.append(backend)
        redis_server = RedisServer(rundir / "redis")
        started.append(redis_server)
        client = redis.Redis.from_url(redis_server.url)
        client.rpush(f"frontend:{HOST}", "bench", backend.url)
        proxies = {"off": Proxy("limits off", rundir / "off", redis_server.url),
                   "on": Proxy("limits on", rundir / "on", redis_server.url, extra=RATE_LIMITED)}
        started.extend(proxies.values())
        if args.rev:
            source = export_revision(args.rev, rundir / "src")
            proxies[f"on@{args.rev}"] = Proxy(f"limits on at {args.rev}", rundir / "on-rev", redis_server.url,
                                              extra=RATE_LIMITED, source=source)
            started.append(proxies[f"on@{args.rev}"])
        runs: dict[str, dict[str, list[dict[str, float]]]] = {s: {n: [] for n in proxies} for s in scenarios}
        for _ in range(args.rounds):
            for scenario in scenarios:
                for name, proxy in proxies.items():
                    runs[scenario][name].append(one_run(proxy, redis_server, client, args.duration,
                                                        args.connections, scenario == "keepalive"))
    finally:
        for process in reversed(started):
            process.stop()
    summary: dict[str, Any] = {}
    print("| scenario | proxy | req/s | CPU µs/request | Redis CPU µs/request | calls per Redis read | "
          "CPU over limits off |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for scenario, by_name in runs.items():
        medians = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
                   for name, results in by_name.items()}
        off = medians["off"]["cpu_us_per_request"]
        for name, figures in medians.items():
            figures["cost_percent"] = (figures["cpu_us_per_request"] - off) / off * 100
            summary[f"{scenario}/{name}"] = {**figures, "runs": by_name[name]}
            print(f"| {scenario} | {name} | {figures['rps']:,.0f} | {figures['cpu_us_per_request']:.0f} | "
                  f"{figures['redis_cpu_us_per_request']:.0f} | {figures['calls_per_read']:.2f} | "
                  f"{figures['cost_percent']:+.1f}% |")
    out = ROOT / "bench" / "results" / f"{stamp}-limits.json"
    out.write_text(json.dumps({"args": vars(args), "summary": summary}, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
