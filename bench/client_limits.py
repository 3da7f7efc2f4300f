"""Slow and greedy clients against one cjs-proxy worker: upload speed, fairness, memory (issue 11).

``.venv/bin/python bench/client_limits.py [--source DIR] [--upload-mib N] [--stalled N]``

Starts the nginx backend (its /upload sink reads the whole body), a redis-server and
cjs-proxy with ONE worker (from ``--source``: an exported revision, to compare before
and after), then measures:

- upload throughput: the median of 3 uploads of ``--upload-mib`` MiB, alone;
- fairness: a normal client's GET latency (p50/p99, one request at a time on its own
  keep-alive connection) alone, then while 1 GiB is uploaded at full speed through the
  same worker;
- memory: the worker's RSS before and after ``--stalled`` uploads that stop just under
  1 MiB into a 2 MiB body (and stay stalled while RSS is read).

Prints one Markdown table. Everything on 127.0.0.1, stopped by PID; bounded loops only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import measure
import redis
from servers import MIB, ROOT, Backend, Proxy, RedisServer, harness

HOST = "limits.bench.test"


def get_latencies(port: int, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """Small GETs, one at a time on one keep-alive connection, for ``seconds`` (or until ``stop``)."""
    latencies: list[float] = []
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            started = time.perf_counter()
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += sock.recv(65536)
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.005)
    return latencies


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def upload_in_child(port: int, size: int, speed: Any) -> None:
    speed.value = measure.upload(port, HOST, size, timeout=120).mib_s


def fairness(port: int, upload_bytes: int, probe_port: int | None = None) -> dict[str, float]:
    """GET latency alone and during an upload through ``port``; measured on ``probe_port``
    (the backend itself, for a control run: what the machine alone adds) if given."""
    probe = probe_port or port
    base50, base99 = percentiles(get_latencies(probe, 5.0))
    done = threading.Event()
    result: dict[str, float] = {}
    speed = multiprocessing.Value("d", 0.0)
    # The uploader is a process of its own: in this one, it would compete for the GIL
    # with the client being measured.
    uploader = multiprocessing.Process(target=upload_in_child, args=(port, upload_bytes, speed))

    def watch() -> None:
        uploader.join(130)
        done.set()

    uploader.start()
    threading.Thread(target=watch, daemon=True).start()
    during = get_latencies(probe, 120.0, stop=done)
    result["upload_mib_s"] = speed.value
    load50, load99 = percentiles(during)
    result.update(base_p50=base50, base_p99=base99, load_p50=load50, load_p99=load99,
                  load_max=max(during), samples=len(during))
    return result


def stalled_memory(port: int, pid: int, count: int) -> tuple[int, int]:
    """RSS (KiB) before, and with ``count`` uploads stalled just under 1 MiB into a 2 MiB body."""
    before = harness.rss_kib(pid)
    sockets = []
    head = (f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {2 * MIB}\r\n\r\n").encode()
    part = b"x" * (MIB - 1000)
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(head + part)
            sockets.append(sock)
        time.sleep(3)  # let the worker read what was sent
        return before, harness.rss_kib(pid)
    finally:
        for sock in sockets:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=ROOT)
    parser.add_argument("--upload-mib", type=int, default=512)
    parser.add_argument("--stalled", type=int, default=300)
    parser.add_argument("--uploads-only", action="store_true", help="measure upload throughput alone")
    parser.add_argument("--control", action="store_true",
                        help="probe latency on the backend directly (the machine's share of it)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cjs-limits-") as tmp:
        work = Path(tmp)
        started = []
        try:
            backend = Backend(work / "backend")
            started.append(backend)
            store = RedisServer(work / "redis")
            started.append(store)
            redis.Redis.from_url(store.url).rpush(f"frontend:{HOST}", "limits", backend.url)
            proxy = Proxy("cjs-proxy", work / "proxy", store.url, workers=1, source=opts.source,
                          extra={"server": {"workerConnections": 2000}})
            started.append(proxy)
            worker = proxy.workers()[0]
            speeds = sorted(measure.upload(proxy.port, HOST, opts.upload_mib * MIB, timeout=120).mib_s
                            for _ in range(3))
            if opts.uploads_only:
                print(f"upload {opts.upload_mib} MiB x3: " + " ".join(f"{v:.0f}" for v in speeds) + " MiB/s")
                return
            fair = fairness(proxy.port, 1024 * MIB, backend.port if opts.control else None)
            before, stalled = stalled_memory(proxy.port, worker, opts.stalled)
        finally:
            for process in reversed(started):
                process.stop()
    print(f"| source | {opts.source} |\n|---|---|")
    print(f"| upload {opts.upload_mib} MiB, median of 3 | {speeds[1]:.0f} MiB/s (min {speeds[0]:.0f}, "
          f"max {speeds[2]:.0f}) |")
    print(f"| normal GET alone p50 / p99 | {fair['base_p50']:.2f} / {fair['base_p99']:.2f} ms |")
    print(f"| normal GET during a 1 GiB upload p50 / p99 / max | {fair['load_p50']:.2f} / {fair['load_p99']:.2f} / "
          f"{fair['load_max']:.0f} ms ({fair['samples']:.0f} requests) |")
    print(f"| that 1 GiB upload | {fair.get('upload_mib_s', 0):.0f} MiB/s |")
    print(f"| worker RSS, {opts.stalled} uploads stalled at ~1 MiB | {before / 1024:.0f} -> {stalled / 1024:.0f} MiB "
          f"(+{(stalled - before) / 1024:.0f} MiB) |")


if __name__ == "__main__":
    main()
