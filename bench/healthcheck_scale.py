"""How long one round of ``cjs-proxy health-check`` takes for 10,000 backends, on one core.

Issue 3 asks for 10,000 backends at a 5 s interval on one core. This registers 10,000
frontends, each with its own backend URL (all served by one nginx, so the probes are
real HTTP exchanges), runs a few rounds of the checker in this process (gevent,
monkeypatched, as the command does) and prints wall time and CPU time per round.
Loopback only; bounded to a few rounds. Run: ``.venv/bin/python bench/healthcheck_scale.py``.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import redis  # noqa: E402
from servers import Backend, RedisServer  # noqa: E402

from cjs_proxy.admin.active_health import HealthChecker, ProbeSettings  # noqa: E402
from cjs_proxy.admin.store import AdminStore  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cjs-hc-"))
    backend, store_server = Backend(workdir / "backend", workers=1), RedisServer(workdir / "redis")
    try:
        client = redis.Redis(port=store_server.port)
        with client.pipeline(transaction=False) as pipe:
            for i in range(args.backends):
                pipe.rpush(f"frontend:app{i}.test", f"app{i}", f"{backend.url}/?backend={i}")
            pipe.execute()
        store = AdminStore.from_urls(store_server.url, store_server.url, timeout=5, max_connections=4)
        checker = HealthChecker(store, ProbeSettings(path="/", timeout=2), interval=5, dead_ttl=30,
                                concurrency=500)
        for n in range(args.rounds):
            wall, cpu = time.monotonic(), cpu_seconds()
            report = checker.run_round()
            print(f"round {n + 1}: {report.backends} backends, {report.dead} dead, "
                  f"{time.monotonic() - wall:.2f} s wall, {cpu_seconds() - cpu:.2f} s CPU")
    finally:
        backend.stop()
        store_server.stop()


if __name__ == "__main__":
    main()
