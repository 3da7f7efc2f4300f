"""Where a benchmark ran: the machine, the versions of what it ran, and the code measured."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from servers import ROOT, find_program


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "?")
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def versions(redis_binary: str | None) -> dict[str, str]:
    def output(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"? ({exc})"
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"

    found = {name: metadata.version(name) for name in ("gunicorn", "gevent", "urllib3", "requests", "redis", "hiredis")
             if _installed(name)}
    found["nginx"] = output([find_program("nginx"), "-v"])
    found["wrk"] = output([find_program("wrk"), "-v"])
    if redis_binary:
        found["redis-server"] = output([redis_binary, "--version"])
    return found


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def git_state(rev: str | None) -> dict[str, Any]:
    """The code measured: a revision, or HEAD plus the work tree's uncommitted files (bench/ aside)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False)
        return done.stdout.rstrip()  # not lstrip: porcelain lines start with a space

    if rev:
        return {"commit": git("rev-parse", rev), "changed_files": [], "source": f"git archive {rev}"}
    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "changed_files": [p for p in changed if not p.startswith("bench/")],
            "source": "work tree"}
