"""One measured load: wrk (closed or open loop) or large transfers, with the server's CPU, RSS and scheduling.

Split from bench/run.py (which orders the scenarios): each function runs one bounded
load against one target and returns its figures, including how much of the machine
went to processes outside the benchmark (``foreign_cpu_share``: when it is not near 0,
the run was shared with other work and its figures are noisy).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import measure
import openloop
from servers import MIB, SMALL_BODY, Process, RedisServer

HOST = "bench.test"


@dataclass
class Target:
    """Something we load: its port and the master process whose workers we watch."""

    name: str
    port: int
    master: Process


@dataclass
class Options:
    duration: float
    connections: int
    vhosts: int
    transfer_mib: int
    transfer_repeats: int
    profile: bool
    #: A git revision to benchmark (exported to the run folder) instead of the working tree.
    rev: str | None
    #: Interleaved rounds of the balancing policies (bench/balance_cost.py), and seconds per run.
    balance_rounds: int = 3
    balance_duration: float = 3.0


# ------------------------------------------------------------------------- measuring


class PeakRss:
    """Samples a server's worker RSS every 50 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, measure.Snapshot.take(self.master).rss_mib)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


#: Every server this run started: CPU the machine spent outside them and wrk is someone else's.
STARTED: list[Process] = []


def own_cpu_seconds() -> float:
    """CPU of every server we started and of our reaped children (wrk), and of this script."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (sum(measure.tree_cpu_seconds(p.pid) for p in STARTED if p.alive())
            + mine.ru_utime + mine.ru_stime + reaped.ru_utime + reaped.ru_stime)


@contextmanager
def watched(target: Target, redis_server: RedisServer | None) -> Iterator[dict[str, Any]]:
    """Records the target's CPU and RSS (and Redis CPU, for the proxy) around a load run.

    Also the share of the machine's CPU that went to processes not of this run (other
    work on a shared machine): when it is not near 0, the figures are noisy.
    """
    usage: dict[str, Any] = {}
    before = measure.Snapshot.take(target.master.pid)
    redis_before = measure.cpu_seconds(redis_server.pid) if redis_server else 0.0
    workers_before = {pid: measure.cpu_seconds(pid) for pid in before.workers}
    sched_before = {pid: measure.schedstat(pid) for pid in before.workers}
    busy_before, own_before, started = measure.machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
    with PeakRss(target.master.pid) as peak:
        yield usage
    elapsed = time.monotonic() - started
    # Per worker: the share of the run it spent on a CPU, and waiting for one (runnable).
    sched = [tuple(a - b for a, b in zip(measure.schedstat(pid), was, strict=True))
             for pid, was in sched_before.items()]
    if sched and elapsed > 0:
        usage["worker_oncpu_share"] = round(sum(s[0] for s in sched) / len(sched) / elapsed, 3)
        usage["worker_runqueue_share"] = round(sum(s[1] for s in sched) / len(sched) / elapsed, 3)
    # How the work fell between the workers (accept imbalance shows here): shares of their CPU.
    worker_cpu = sorted((measure.cpu_seconds(pid) - cpu for pid, cpu in workers_before.items()), reverse=True)
    if len(worker_cpu) > 1 and sum(worker_cpu) > 0:
        usage["worker_cpu_split"] = [round(c / sum(worker_cpu), 3) for c in worker_cpu]
    foreign = (measure.machine_busy_seconds() - busy_before) - (own_cpu_seconds() - own_before)
    usage["foreign_cpu_share"] = round(max(0.0, foreign) / (elapsed * (os.cpu_count() or 1)), 3)
    after = measure.Snapshot.take(target.master.pid)
    used = measure.Usage.between(before, after)
    usage.update(rss_before_mib=used.rss_before_mib, rss_after_mib=used.rss_after_mib,
                 rss_peak_mib=round(max(peak.peak, used.rss_after_mib), 1), cpu_s=round(used.cpu_s, 3),
                 cpu_sys_share=round(used.sys_s / used.cpu_s, 3) if used.cpu_s else None,
                 workers_stable=used.workers_stable)
    if redis_server:
        usage["redis_cpu_s"] = round(measure.cpu_seconds(redis_server.pid) - redis_before, 3)


def per_request(usage: dict[str, Any], requests: int) -> None:
    """CPU per request in microseconds (the server's, and Redis's for the proxy)."""
    if requests:
        usage["cpu_us_per_req"] = round(usage["cpu_s"] / requests * 1e6, 1)
        if "redis_cpu_s" in usage:
            usage["redis_cpu_us_per_req"] = round(usage["redis_cpu_s"] / requests * 1e6, 1)


def children_cpu_seconds() -> float:
    """CPU of this script's reaped children: wrk's, once its run has been waited for."""
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return reaped.ru_utime + reaped.ru_stime


def connections_per_worker(port: int) -> list[int]:
    """Established client connections to ``port`` per worker process (``ss -tnp``), most first."""
    ss = shutil.which("ss") or shutil.which("ss", path="/usr/sbin:/sbin")
    if not ss:
        return []
    done = subprocess.run([ss, "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True,
                          text=True, timeout=10, check=False)
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", done.stdout):
        counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def wrk_run(target: Target, opts: Options, redis_server: RedisServer | None, path: str = "/",
            connections: int | None = None, threads: int = 2, headers: tuple[str, ...] = (),
            script: Path | None = None, host: str = HOST, duration: float | None = None,
            sample_connections: bool = False) -> dict[str, Any]:
    """One wrk run with the target's CPU, RSS and Redis CPU, and wrk's own CPU share.

    ``sample_connections``: also count, half-way through, the client connections each
    worker holds (how the kernel spread the accepts).
    """
    connections = connections or opts.connections
    duration = duration or opts.duration
    sampled: list[list[int]] = []
    sampler = threading.Timer(duration / 2, lambda: sampled.append(connections_per_worker(target.port)))
    wrk_before = children_cpu_seconds()
    with watched(target, redis_server) as usage:
        if sample_connections:
            sampler.start()
        result = measure.run_wrk(f"http://127.0.0.1:{target.port}{path}", host, connections=connections,
                                 threads=min(threads, connections), duration=duration,
                                 headers=headers, script=script)
        if sample_connections:
            sampler.join()
    wrk_cpu = children_cpu_seconds() - wrk_before
    figures = {"rps": round(result.rps, 1), "requests": result.requests, "seconds": result.seconds,
               "p50_ms": result.p50_ms, "p75_ms": result.p75_ms, "p90_ms": result.p90_ms,
               "p99_ms": result.p99_ms, "errors": result.errors, "non_2xx_3xx": result.non_2xx_3xx,
               "socket_errors": result.socket_errors, **usage,
               # wrk shares the 2 CPUs with the servers: the share of the machine it took.
               "wrk_cpu_share": round(wrk_cpu / (result.seconds * (os.cpu_count() or 1)), 3)
               if result.seconds else None}
    if sampled and sampled[0]:
        figures["connections_per_worker"] = sampled[0]
    per_request(figures, result.requests)
    print(f"    {target.name:10} {result.rps:>10,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
          f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  "
          f"cpu {figures.get('cpu_us_per_req', 0):.0f} us/req  rss {usage['rss_before_mib']}->"
          f"{usage['rss_after_mib']} MiB  others {usage['foreign_cpu_share']:.0%}", flush=True)
    return figures


def open_loop_run(target: Target, opts: Options, redis_server: RedisServer | None, rate: float | None,
                  rundir: Path, label: str) -> dict[str, Any]:
    """One constant-rate (or, ``rate=None``, closed-loop) run of bench/openloop.py's wrk script."""
    wrk_before = children_cpu_seconds()
    with watched(target, redis_server) as usage:
        figures = openloop.run(f"http://127.0.0.1:{target.port}/", HOST, rate=rate, connections=opts.connections,
                               duration=opts.duration, script_dir=rundir)
    wrk_cpu = children_cpu_seconds() - wrk_before
    figures.update(usage, target=target.name, load=label,
                   wrk_cpu_share=round(wrk_cpu / (figures["duration_s"] * (os.cpu_count() or 1)), 3))
    per_request(figures, figures["requests"])
    print(f"    {target.name:16} {label:>8} offered {figures['offered_rate'] or 0:>7,.0f} achieved "
          f"{figures['rate']:>7,.0f} req/s  p50 {figures['p50_ms']:6.2f}  p99 {figures['p99_ms']:6.2f}  "
          f"p99.9 {figures['p999_ms']:6.2f} ms  late {figures['late']}  errors {figures['errors']}  "
          f"others {usage['foreign_cpu_share']:.0%}", flush=True)
    return figures


def transfer_run(target: Target, opts: Options, kind: str) -> dict[str, Any]:
    """``opts.transfer_repeats`` uploads or downloads of ``opts.transfer_mib`` MiB; the median is reported."""
    size = opts.transfer_mib * MIB
    results = []
    with watched(target, None) as usage:
        for _ in range(opts.transfer_repeats):
            if kind == "upload":
                results.append(measure.upload(target.port, HOST, size))
            else:
                results.append(measure.download(target.port, HOST, f"/{opts.transfer_mib}m.bin", size))
    good = [r for r in results if r.ok]
    figures: dict[str, Any] = {
        "mib_s": round(statistics.median(r.mib_s for r in good), 1) if good else 0.0,
        "seconds": round(statistics.median(r.seconds for r in good), 3) if good else None,
        "requests": len(results), "errors": len(results) - len(good),
        "error_details": sorted({r.detail for r in results if not r.ok}),
        "all_mib_s": [round(r.mib_s, 1) for r in results], **usage}
    per_request(figures, len(results))
    print(f"    {target.name:10} {figures['mib_s']:>10,.0f} MiB/s  errors {figures['errors']}  "
          f"rss {usage['rss_before_mib']}->{usage['rss_after_mib']} (peak {usage['rss_peak_mib']}) MiB",
          flush=True)
    return figures


def check_answers(targets: list[Target], host: str = HOST) -> None:
    """Before loading anything: every target must answer the small body, or the figures mean nothing."""
    for target in targets:
        status, body = measure.fetch(target.port, host)
        if status != 200 or body != SMALL_BODY:
            raise RuntimeError(f"{target.name} answered {status} {body[:200]!r} for {host}; "
                               f"expected 200 {SMALL_BODY!r}")
