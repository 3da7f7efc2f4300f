"""What a benchmark run measures: wrk runs (parsed), large transfers, and /proc CPU and RSS of a server."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import children

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


# ------------------------------------------------------------------------------ /proc


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process in seconds: fields 14 and 15 of /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 is fields[0]
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def schedstat(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's main thread.

    ``/proc/<pid>/schedstat``: the wait is time the scheduler kept a ready thread off
    the CPUs, i.e. what sharing the machine (with wrk, nginx, Redis, others) costs it.
    """
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent running processes since boot (/proc/stat: user + nice + system).

    Interrupt and softirq time are left out: loopback traffic is processed there and
    may not be charged to the processes that caused it.
    """
    user, nice, system = (int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:4])
    return (user + nice + system) / CLOCK_TICKS


def tree_cpu_seconds(master: int) -> float:
    """CPU of a master process and its direct children (workers)."""
    return sum(cpu_seconds(p) for p in (master, *children(master)))


@dataclass
class Snapshot:
    """A server's processes at one instant: worker pids, worker RSS, CPU of master and workers."""

    workers: list[int]
    rss_mib: float
    user_s: float
    sys_s: float

    @classmethod
    def take(cls, master: int) -> Snapshot:
        workers = children(master)
        times = [cpu_times(p) for p in (master, *workers)]
        return cls(workers, sum(rss_kib(p) for p in workers) / 1024,
                   sum(t[0] for t in times), sum(t[1] for t in times))


@dataclass
class Usage:
    """What a server used during one measurement."""

    rss_before_mib: float
    rss_after_mib: float
    cpu_s: float
    #: The part of ``cpu_s`` spent in the kernel (system time).
    sys_s: float
    #: False when a worker was replaced mid-run (its CPU is then partly lost).
    workers_stable: bool

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot) -> Usage:
        sys_s = after.sys_s - before.sys_s
        return cls(round(before.rss_mib, 1), round(after.rss_mib, 1), after.user_s - before.user_s + sys_s, sys_s,
                   sorted(before.workers) == sorted(after.workers))


# ------------------------------------------------------------------------------- wrk

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION = re.compile(r"^([0-9.]+)(us|ms|s|m|h)$")


def duration_ms(text: str) -> float:
    """wrk's ``512.00us`` / ``1.23ms`` / ``1.02s`` as milliseconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    output: str = ""

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())


def parse_wrk(output: str) -> WrkResult:
    """The figures of ``wrk --latency``'s text report."""
    total = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.M)
    if not total or not rps:
        raise ValueError(f"unexpected wrk output:\n{output}")
    percentiles = {int(p): duration_ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M)}
    if len(percentiles) != 4:
        raise ValueError(f"no latency distribution in wrk output (--latency missing?):\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                             (int(n) for n in sockets.groups()), strict=True)) if sockets else {}
    return WrkResult(
        requests=int(total.group(1)), seconds=duration_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(rps.group(1)), p50_ms=percentiles[50], p75_ms=percentiles[75], p90_ms=percentiles[90],
        p99_ms=percentiles[99], non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors, output=output)


def wrk_prefix() -> list[str]:
    """``nice -n N`` before wrk when ``BENCH_WRK_NICE=N`` (an experiment: the servers first on the CPUs)."""
    nice = os.environ.get("BENCH_WRK_NICE")
    return ["nice", "-n", nice] if nice else []


def run_wrk(url: str, host: str, *, connections: int, threads: int, duration: float,
            headers: tuple[str, ...] = (), script: Path | None = None) -> WrkResult:
    """One wrk run, bounded in time (wrk's own -d, and a hard timeout around it)."""
    argv = [*wrk_prefix(), shutil.which("wrk") or "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s",
            "--latency", "--timeout", "5s", "-H", f"Host: {host}"]
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


# -------------------------------------------------------------------------- transfers


@dataclass
class TransferResult:
    ok: bool
    status: int
    bytes: int
    seconds: float
    detail: str = ""

    @property
    def mib_s(self) -> float:
        return self.bytes / MIB / self.seconds if self.seconds > 0 else 0.0


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, int]:
    """Read one response to the end (the server closes: we sent ``Connection: close``).

    Returns the status and the body bytes received; the body is counted, not kept.
    """
    view = memoryview(buf)
    head = b""
    while b"\r\n\r\n" not in head:
        n = sock.recv_into(view)
        if not n:
            raise ConnectionError(f"connection closed before the response head ({len(head)} bytes)")
        head += bytes(view[:n])
    head, _, rest = head.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    body = len(rest)
    while True:
        n = sock.recv_into(view)
        if not n:
            return status, body
        body += n


def upload(port: int, host: str, size: int, path: str = "/upload", timeout: float = 60.0) -> TransferResult:
    """POST ``size`` bytes with a Content-Length, timed until the whole response has arrived."""
    chunk = memoryview(os.urandom(256 * 1024))
    remaining = size
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
                         f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode())
            while remaining:
                piece = chunk[:min(remaining, len(chunk))]
                sock.sendall(piece)
                remaining -= len(piece)
            status, _ = _read_response(sock, bytearray(64 * 1024))
    except OSError as exc:
        return TransferResult(False, 0, size - remaining, time.perf_counter() - started,
                              f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - started
    return TransferResult(200 <= status < 300, status, size, elapsed, "" if status < 300 else f"status {status}")


def download(port: int, host: str, path: str, expected: int, timeout: float = 60.0) -> TransferResult:
    """GET ``path``, reading (and counting) the body until the server closes."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            status, received = _read_response(sock, bytearray(1024 * 1024))
    except OSError as exc:
        return TransferResult(False, 0, 0, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - started
    ok = status == 200 and received == expected
    return TransferResult(ok, status, received, elapsed,
                          "" if ok else f"status {status}, {received} of {expected} bytes")


def fetch(port: int, host: str, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    """One small GET (status, body), to check a target answers what we think before loading it."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a JSON-able dict, without wrk's raw text (kept apart)."""
    data = {k: v for k, v in vars(obj).items() if k != "output"}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()}
