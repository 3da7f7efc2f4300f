"""Open-loop latency against offered rate, limits off and on: where the queueing starts.

Starts one nginx backend, one Redis and two proxies (2 workers each): ``plain`` (rate
limits off, routes from the route cache) and ``full`` (every limit on, as `make bench`'s
``rate-limits``), then runs bench/openloop.py's constant-rate wrk script once per
``NAME:RATE:CONNECTIONS`` given, in that order, and prints one JSON line per run:
achieved rate, p50/p90/p99, requests that left late, CPU and Redis CPU per request,
the workers' time on a CPU and waiting for one, wrk's and others' share of the machine.

    .venv/bin/python bench/latency_curve.py full:500:50 full:1000:50 plain:1000:50 [--duration 4]

``--source DIR`` adds a third proxy, ``source``, with every limit on, running the code in
DIR (a patched ``git archive`` of the tree: to measure a hot-path change side by side).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import measure
import redis
from loads import HOST, STARTED, Options, Target, open_loop_run
from run import RATE_LIMITED
from servers import ROOT, Backend, Proxy, RedisServer

KEYS = ("rate", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "late", "errors", "cpu_us_per_req", "redis_cpu_us_per_req",
        "worker_oncpu_share", "worker_runqueue_share", "wrk_cpu_share", "foreign_cpu_share")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME:RATE:CONNECTIONS, NAME plain or full")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--source", type=Path, help="a folder of proxy code to run as 'source' (limits on)")
    args = parser.parse_args()
    specs = [(name, float(rate), int(conns)) for name, rate, conns in (run.split(":") for run in args.runs)]
    rundir = ROOT / "var" / "bench" / f"{time.strftime('%Y-%m-%dT%H%MZ', time.gmtime())}-curve"
    try:
        backend = Backend(rundir / "backend")
        STARTED.append(backend)
        redis_server = RedisServer(rundir / "redis")
        STARTED.append(redis_server)
        redis.Redis(port=redis_server.port).rpush(f"frontend:{HOST}", "bench", backend.url)
        proxies = {"plain": Proxy("plain", rundir / "plain", redis_server.url),
                   "full": Proxy("full", rundir / "full", redis_server.url, extra=RATE_LIMITED)}
        if args.source:
            proxies["source"] = Proxy("source", rundir / "source", redis_server.url, extra=RATE_LIMITED,
                                      source=args.source.resolve())
        STARTED.extend(proxies.values())
        targets = {name: Target(name, proxy.port, proxy) for name, proxy in proxies.items()}
        for target in targets.values():
            measure.run_wrk(f"http://127.0.0.1:{target.port}/", HOST, connections=50, threads=2, duration=1)
        for name, rate, connections in specs:
            opts = Options(args.duration, connections, 0, 1, 1, False, None)
            figures = open_loop_run(targets[name], opts, redis_server, rate, rundir, f"{connections}c")
            print(json.dumps({"run": f"{name}:{rate:g}:{connections}", **{k: figures.get(k) for k in KEYS}}),
                  flush=True)
    finally:
        for process in reversed(STARTED):
            process.stop()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
