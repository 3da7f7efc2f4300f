"""The abuse scenario of issue 11: slow and stalled clients against one worker, and a normal client beside them.

``.venv/bin/python bench/abuse.py [--rev REV] [--during 40] [--attack-address 127.0.0.2]`` starts (on 127.0.0.1, free
ports, stopped by PID) an nginx backend, a private redis-server and cjs-proxy with ONE
worker (``server.maxSockets`` 100, ``server.workerConnections`` 4000 so that the attack
fits in the worker), then:

1. ``before``: a normal client GETs the app's 13-byte page on a keep-alive connection for
   ``--before`` seconds (latencies, errors), and the worker's RSS is read;
2. ``during``: 1,000 slowloris connections (a request head, one header line every 5 s),
   300 slow POSTs (a 1,000-byte body, one byte every 5 s), 300 stalled uploads (1 MiB
   declared, 1 MiB less 1 KiB sent, then nothing) and 100 clients that never read a
   4 MiB answer (a 4 KiB receive buffer) are opened over ~3 s and kept open (any that
   the proxy cuts reconnects), while the normal client goes on for ``--during`` seconds
   and the worker's RSS is sampled every 0.5 s (peak);
3. ``after``: every attacker closes; after ``--settle`` seconds the RSS is read again.

It prints the normal client's p50/p99 before and during, its errors, and the worker's
RSS before/peak/after, and writes them to ``bench/results/<date>-abuse.md``. Everything
is bounded: connection counts are fixed, every phase has a duration, and the whole run
is stopped past ``BUDGET_SECONDS``. ``--rev main`` measures that revision's code
(``git archive``), as ``bench/run.py --rev`` does.

``--attack-cpu N`` pins the attack process to CPU N and the proxy's worker to the other
CPUs, as if the attackers were other machines: on a 2-CPU machine the attack generator
(Python asyncio, 1,700 connections, reconnect waves) otherwise takes CPU time the worker
and the normal client need, and that wait is counted as the proxy's. The normal client,
the backend and Redis are not pinned.

``--attack-address`` binds every attacker's socket to that source address (any
127.0.0.0/8 address reaches the proxy on loopback); the normal client stays on
127.0.0.1. The default, 127.0.0.1 for everyone, is the scenario as it was first
measured: one address, which the proxy cannot tell apart. With another address the
attackers are held to their share of the pool (``server.maxSocketsPerClient``,
``cjs_proxy/pipeline/fair_share.py``), as distinct clients on the internet would be; on
one address the pool is that address's alone and only the slow lanes protect the normal
client. The results file names both addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from servers import MIB, ROOT, Backend, Process, Proxy, RedisServer, children

HOST = "abuse.test"
#: The whole run is stopped (and everything it started) past this many seconds.
BUDGET_SECONDS = 300
SLOWLORIS, SLOW_POSTS, STALLED_UPLOADS, NON_READERS = 1000, 300, 300, 100
#: Seconds between two trickled bytes (slowloris header lines, slow POST body bytes).
TRICKLE = 5.0
#: The normal client's patience per request (the proxy's pool wait is 30 s).
NORMAL_TIMEOUT = 35.0
#: The normal client's source address (``--attack-address`` sets the attackers').
NORMAL_ADDRESS = "127.0.0.1"


@dataclass
class Phase:
    """The normal client's requests in one phase."""

    name: str
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Every request's time, failed ones included (a 503 after 30 s is the client's wait too).
    waits: list[float] = field(default_factory=list)

    def percentile(self, share: float) -> float | None:
        if not self.waits:
            return None
        ordered = sorted(self.waits)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        return {"requests": len(self.waits), "ok": len(self.latencies),
                "errors": len(self.errors), "error_kinds": sorted(set(self.errors))[:5],
                "p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
                "p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
                "max_ms": round(max(self.waits) * 1000, 1) if self.waits else None,
                "mean_ms": round(statistics.fmean(self.waits) * 1000, 2) if self.waits else None}


# ------------------------------------------------------------------ normal client


class NormalClient:
    """One keep-alive client GETting the small page in a loop, in its own thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def request(self) -> tuple[float, str | None]:
        started = time.perf_counter()
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=NORMAL_TIMEOUT,
                                                     source_address=(NORMAL_ADDRESS, 0))
            self.sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            status, body_ok = self._read_answer()
        except OSError as exc:
            self._drop()
            return time.perf_counter() - started, type(exc).__name__
        elapsed = time.perf_counter() - started
        if status != 200 or not body_ok:
            self._drop()
            return elapsed, f"status {status}"
        return elapsed, None

    def _read_answer(self) -> tuple[int, bool]:
        assert self.sock is not None
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed before the answer")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed mid-body")
            body += chunk
        if b"connection: close" in head.lower():
            self._drop()
        return status, len(body) == length

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def run(self, phase: Phase, seconds: float, pause: float = 0.01) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            elapsed, error = self.request()
            phase.waits.append(elapsed)
            if error is None:
                phase.latencies.append(elapsed)
            else:
                phase.errors.append(error)
            time.sleep(pause)


# ----------------------------------------------------------------------- attackers


class Attack:
    """The attackers, in an asyncio loop of a process of their own; each reconnects when cut.

    A process, not a thread: the normal client's thread would otherwise wait for the
    attack's thread to release the GIL (up to ``sys.getswitchinterval()``, 5 ms) after each
    answer arrived, and that wait was counted as the proxy's (run 0653Z: p99 6.6 ms with the
    attack in a thread; with a 0.2 ms switch interval, 4.9 ms).
    """

    def __init__(self, port: int, address: str = NORMAL_ADDRESS, cpu: int | None = None) -> None:
        self.port = port
        #: Every attacking socket's source address.
        self.address = address
        #: The one CPU the attack process runs on (None: any), so that its own work is not the proxy's.
        self.cpu = cpu
        self.stop = asyncio.Event()
        self.cut = {"slowloris": 0, "slow-post": 0, "stalled-upload": 0, "non-reader": 0}
        self.loop: asyncio.AbstractEventLoop | None = None

    async def _connection(self, kind: str, script: Any) -> None:
        while not self.stop.is_set():
            writer = None
            try:
                reader, writer = await self._open(kind)
                await script(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                if writer is not None:
                    writer.close()
            if not self.stop.is_set():
                self.cut[kind] += 1
                await self._pause(1.0)  # then come back

    async def _open(self, kind: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if kind != "non-reader":
            return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(self.address, 0))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.setblocking(False)
        try:
            sock.bind((self.address, 0))
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=4096)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass

    async def _until_stopped_or_closed(self, reader: asyncio.StreamReader, interval: float,
                                       send: Any = None) -> None:
        while not self.stop.is_set():
            try:
                data = await asyncio.wait_for(reader.read(65536), interval)
            except TimeoutError:
                if send is not None:
                    send()
                continue
            if not data:
                return

    async def slowloris(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n".encode())
        await self._until_stopped_or_closed(reader, TRICKLE, lambda: writer.write(b"X-Slow: 1\r\n"))

    async def slow_post(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\nx".encode())
        await self._until_stopped_or_closed(reader, TRICKLE, lambda: writer.write(b"x"))

    async def stalled_upload(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {MIB}\r\n\r\n".encode())
        writer.write(b"u" * (MIB - 1024))
        await self._until_stopped_or_closed(reader, TRICKLE)

    async def non_reader(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"GET /4m.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await writer.drain()
        while not self.stop.is_set():  # never reads: only notices a reset
            await self._pause(1.0)
            if writer.transport.is_closing() or reader.at_eof():
                return
            try:
                writer.transport.get_extra_info("socket").getpeername()
            except OSError:
                return

    async def _main(self, ramp: float) -> None:
        plan = ([("slowloris", self.slowloris)] * SLOWLORIS + [("slow-post", self.slow_post)] * SLOW_POSTS
                + [("stalled-upload", self.stalled_upload)] * STALLED_UPLOADS
                + [("non-reader", self.non_reader)] * NON_READERS)
        tasks = []
        for i, (kind, script) in enumerate(plan):
            tasks.append(asyncio.ensure_future(self._connection(kind, script)))
            if i % 50 == 49:
                await asyncio.sleep(ramp * 50 / len(plan))
        await self.stop.wait()
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()

    def start(self, ramp: float = 3.0) -> multiprocessing.process.BaseProcess:
        """Run the attack in a forked process until ``halt``; its cut counts come back then."""
        context = multiprocessing.get_context("fork")
        self._halt = context.Event()
        self._counts = context.SimpleQueue()
        process = context.Process(target=self._run, args=(ramp,), name="attack", daemon=True)
        process.start()
        return process

    def _run(self, ramp: float) -> None:
        """In the attack's process: the loop, stopped when the parent sets ``_halt``."""
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        loop, stop = self.loop, self.stop
        threading.Thread(target=lambda: (self._halt.wait(), loop.call_soon_threadsafe(stop.set)),
                         daemon=True).start()
        try:
            self.loop.run_until_complete(self._main(ramp))
        finally:
            self.loop.close()
            self._counts.put(dict(self.cut))

    def halt(self, process: multiprocessing.process.BaseProcess) -> None:
        self._halt.set()
        process.join(60)
        if process.is_alive():
            process.kill()
            raise RuntimeError("the attack process did not stop within 60 s")
        if not self._counts.empty():
            self.cut = self._counts.get()


# ----------------------------------------------------------------------------- run


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def export_revision(rev: str, dest: Path) -> Path:
    """``git archive REV`` unpacked into ``dest`` (as bench/run.py does)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def scenario(opts: argparse.Namespace, rundir: Path, started: list[Process]) -> dict[str, Any]:
    source = export_revision(opts.rev, rundir / "src") if opts.rev else ROOT
    backend = Backend(rundir / "backend")
    started.append(backend)
    (rundir / "backend" / "www" / "4m.bin").write_bytes(os.urandom(4 * MIB))
    store = RedisServer(rundir / "redis")
    started.append(store)
    proxy = Proxy("cjs-proxy", rundir / "proxy", store.url, workers=1, source=source,
                  extra={"server": {"maxSockets": 100, "workerConnections": 4000}})
    started.append(proxy)
    redis.Redis(port=store.port).rpush(f"frontend:{HOST}", "abuse", backend.url)
    worker = children(proxy.pid)[0]
    if opts.attack_cpu is not None:
        os.sched_setaffinity(worker, set(range(os.cpu_count() or 1)) - {opts.attack_cpu})
    client = NormalClient(proxy.port)
    client.request()  # warm: route cached, pool connection open
    before = Phase("before")
    client.run(before, opts.before)
    rss = {"before": rss_mib(worker)}
    attack = Attack(proxy.port, opts.attack_address, cpu=opts.attack_cpu)
    attackers = attack.start()
    during = Phase("during")
    peak = [rss["before"]]
    sampling = True

    def sample() -> None:
        while sampling:
            peak.append(rss_mib(worker))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    client.run(during, opts.during)
    attack.halt(attackers)
    sampling = False
    sampler.join()
    time.sleep(opts.settle)
    rss["peak"], rss["after"] = max(peak), rss_mib(worker)
    return {"before": before.summary(), "during": during.summary(), "rss_mib": {k: round(v, 1) for k, v in rss.items()},
            "attackers_cut_and_back": dict(attack.cut), "worker_alive": worker in children(proxy.pid),
            "load_before": opts.load_before,
            "addresses": {"attackers": opts.attack_address, "normal client": NORMAL_ADDRESS},
            "attack_cpu": opts.attack_cpu}


def report(result: dict[str, Any], opts: argparse.Namespace, stamp: str) -> str:
    before, during, rss = result["before"], result["during"], result["rss_mib"]
    ratio = (during["p99_ms"] / before["p99_ms"]) if during["p99_ms"] and before["p99_ms"] else None
    lines = [
        f"# Abuse scenario, {stamp}",
        "",
        f"Code: {opts.rev or 'work tree'} ({git('rev-parse', opts.rev or 'HEAD')[:10]}). One worker,"
        " `server.maxSockets` 100, `server.workerConnections` 4000, other settings default.",
        f"Attack: {SLOWLORIS} slowloris + {SLOW_POSTS} slow POSTs + {STALLED_UPLOADS} stalled uploads"
        f" + {NON_READERS} non-reading clients (4 MiB answer), each reconnecting when cut.",
        f"Addresses: attackers from {result['addresses']['attackers']}, the normal client from"
        f" {result['addresses']['normal client']}"
        f"{' (one address for all)' if result['addresses']['attackers'] == NORMAL_ADDRESS else ''}.",
        f"Machine: {os.cpu_count()} CPUs, load average before the run {result['load_before']}"
        " (shared machine: other engineers' runs may overlap).",
        "CPUs: " + ("shared by everything" if result["attack_cpu"] is None else
                    f"the attack process on CPU {result['attack_cpu']} alone, the proxy's worker on the others"
                    " (the normal client, backend and Redis anywhere)") + ".",
        "",
        "Latencies are every request's time, failed ones included (a 503 is a wait too).",
        "",
        "| normal client | requests | errors | p50 ms | p99 ms | max ms | mean ms |",
        "|---|---|---|---|---|---|---|",
        *(f"| {name} ({getattr(opts, name):g} s) | {p['requests']} | {p['errors']} | {p['p50_ms']} | {p['p99_ms']}"
          f" | {p['max_ms']} | {p['mean_ms']} |" for name, p in (("before", before), ("during", during))),
        "",
        f"p99 during / before: {f'{ratio:.1f}x' if ratio else 'n/a'}."
        f" Errors during: {during['errors']} {during['error_kinds'] or ''}",
        "",
        f"Worker RSS (MiB): before {rss['before']}, peak {rss['peak']}, after {rss['after']}"
        f" ({opts.settle:g} s after the attackers left); growth at peak {rss['peak'] - rss['before']:.1f}.",
        f"Attackers cut by the proxy (then back): {result['attackers_cut_and_back']}."
        f" Worker still alive: {result['worker_alive']}.",
        "",
    ]
    return "\n".join(lines)


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False)
    return done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="measure this git revision (exported) instead of the work tree")
    parser.add_argument("--before", type=float, default=10, help="seconds of baseline (default 10)")
    parser.add_argument("--during", type=float, default=40, help="seconds under attack (default 40)")
    parser.add_argument("--settle", type=float, default=10, help="seconds after the attack before RSS (default 10)")
    parser.add_argument("--attack-address", default=NORMAL_ADDRESS,
                        help="source address of every attacking client, a 127.0.0.0/8 address (default "
                             f"{NORMAL_ADDRESS}, the normal client's: one address for all)")
    parser.add_argument("--attack-cpu", type=int, default=None,
                        help="pin the attack process to this CPU and the proxy's worker to the others, as if "
                             "the attackers were other machines (default: no pinning)")
    opts = parser.parse_args()
    opts.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    rundir = ROOT / "var" / "bench" / f"{stamp}-abuse{'-' + opts.rev if opts.rev else ''}"
    started: list[Process] = []
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("abuse run over budget")))
    signal.alarm(BUDGET_SECONDS)
    try:
        result = scenario(opts, rundir, started)
    finally:
        signal.alarm(0)
        for process in reversed(started):
            process.stop()
    text = report(result, opts, stamp)
    print(text)
    suffix = f"-{opts.rev}" if opts.rev else ""
    out = ROOT / "bench" / "results" / f"{stamp}-abuse{suffix}.md"
    out.write_text(text)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
