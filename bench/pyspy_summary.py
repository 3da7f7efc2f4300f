"""Profile one proxy worker with py-spy and summarise where its samples go.

py-spy's ``raw`` format is one collapsed stack per line (``frame;frame;... count``),
here with the thread as the first frame: only the worker's main thread (gevent's hub and
every request greenlet) is kept, since an idle gevent threadpool thread waiting on
its lock is otherwise counted as busy. From the stacks we count, per function, the
samples where it is on top of the stack (self) and those where it is anywhere in the
stack (total), and the self samples per area (gunicorn, gevent, urllib3, redis-py,
cjs-proxy...), as performance-notes.md does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

#: Where a frame's file says its code comes from, first match wins.
AREAS = (
    ("cjs-proxy", ("/cjs_proxy/", "/workers/")),
    ("gunicorn", ("/gunicorn/",)),
    ("gevent", ("/gevent/", "/greenlet/")),
    ("urllib3", ("/urllib3/",)),
    ("requests", ("/requests/",)),
    ("redis-py", ("/redis/", "/hiredis/")),
    ("http.client (headers)", ("/http/client.py", "/email/")),
    ("httptools (llhttp)", ("/httptools/",)),
    ("socket / ssl", ("/socket.py", "/ssl.py", "/selectors.py")),
    ("logging", ("/logging/",)),
)
#: Steps of a proxied request, by the functions that run them: a sample counts for a
#: step when one of them is anywhere in its stack (steps may overlap: the liveness
#: polls happen inside the pool checkouts).
STAGES = (
    ("gunicorn: read and parse the request", ("Parser.__next__", "Request.__init__")),
    ("route + limits: Redis EVALSHA (Router.resolve)", ("Router.resolve",)),
    ("↳ of which: redis-py pool checkout", ("BlockingConnectionPool.get_connection", "ConnectionPool.get_connection")),
    ("backend: pool checkout (_get_conn)", ("HTTPConnectionPool._get_conn",)),
    ("liveness polls: BackendConnection.is_connected + redis-py can_read",
     ("BackendConnection.is_connected", "AbstractConnection.can_read")),
    ("backend: send the request (Upstream._write_request)", ("Upstream._write_request",)),
    ("backend: read the response head (ResponseReader.read_head)", ("ResponseReader.read_head",)),
    ("client: response head and body (start_response, write)", ("Response.start_response", "Response.write",
                                                                "Response.close")),
    ("access log", ("ProxyApp.log_exchange",)),
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def record(pid: int, seconds: float, output: Path, py_spy: str, rate: int = 200) -> str:
    """Run ``py-spy record`` on ``pid`` for ``seconds``; returns py-spy's own message (samples, errors)."""
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
            "--format", "raw", "--full-filenames", "--nolineno", "--threads", "--output", str(output)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return " ".join(line.strip() for line in (done.stdout + done.stderr).splitlines() if "Samples" in line)


def short_file(path: str) -> str:
    """``/.../site-packages/gunicorn/http/wsgi.py`` -> ``gunicorn/http/wsgi.py`` (stdlib and checkout alike)."""
    for pattern in (r"/site-packages/", r"/lib/python3\.\d+/", r"/(?=(?:cjs_proxy|workers)/)"):
        parts = re.split(pattern, path, maxsplit=1)
        if len(parts) == 2:
            return parts[1]
    return path


def area_of(path: str) -> str:
    for name, markers in AREAS:
        if any(marker in path for marker in markers):
            return name
    return "other (stdlib, interpreter)"


def parse(raw: str, thread: int | None = None) -> tuple[list[tuple[list[tuple[str, str]], int]], int]:
    """Stacks as ``[(function, file), ...]`` root first, with their sample counts.

    With ``thread``, only that thread's stacks are kept (the first frame names the
    thread, as ``py-spy record --threads`` writes it); the samples of the others are
    returned as the second value.
    """
    stacks = []
    others = 0
    for line in raw.splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        names = frames.split(";")
        if thread is not None:
            if names[0] != f"thread ({thread})":
                others += int(count)
                continue
            names = names[1:]
        parsed = []
        for frame in names:
            match = _FRAME.match(frame)
            parsed.append((match["func"], match["file"]) if match else (frame, ""))
        stacks.append((parsed, int(count)))
    return stacks, others


def summarise(raw: str, thread: int | None = None, top: int = 15) -> dict[str, Any]:
    """Top functions by self and total share of samples, and self samples per area."""
    stacks, others = parse(raw, thread)
    total = sum(count for _, count in stacks)
    own: Counter[tuple[str, str]] = Counter()
    anywhere: Counter[tuple[str, str]] = Counter()
    areas: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        own[frames[-1]] += count
        areas[area_of(frames[-1][1])] += count
        for frame in set(frames):
            anywhere[frame] += count
        functions = {func for func, _ in frames}
        for stage, names in STAGES:
            if functions.intersection(names):
                stages[stage] += count

    def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
        return [{"function": func, "file": short_file(file), "samples": n, "share": round(n / total, 4)}
                for (func, file), n in counter.most_common(top)]

    return {
        "samples": total,
        "other_thread_samples": others,
        "self": rows(own),
        "total": rows(anywhere),
        "areas": [{"area": name, "samples": n, "share": round(n / total, 4)} for name, n in areas.most_common()],
        "stages": [{"stage": stage, "samples": stages[stage], "share": round(stages[stage] / total, 4)}
                   for stage, _ in STAGES],
    }


def markdown(summary: dict[str, Any], top: int = 12) -> str:
    if not summary.get("samples"):
        return "_no profile_\n"
    lines = [f"{summary['samples']} samples of one worker's main thread "
             f"({summary.get('other_thread_samples', 0)} of other threads left out).", "",
             "| area (self time) | share |", "|---|---|"]
    lines += [f"| {a['area']} | {a['share']:.0%} |" for a in summary["areas"]]
    if summary.get("stages"):
        lines += ["", "| step of a request (samples with it in the stack) | share |", "|---|---|"]
        lines += [f"| {s['stage']} | {s['share']:.0%} |" for s in summary["stages"]]
    for kind, title in (("self", "self (on top of the stack)"), ("total", "total (anywhere in the stack)")):
        lines += ["", f"| function, by {title} | file | share |", "|---|---|---|"]
        lines += [f"| `{r['function']}` | {r['file']} | {r['share']:.1%} |" for r in summary[kind][:top]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # summarise a saved raw profile: python bench/pyspy_summary.py FILE [THREAD_ID]
    print(markdown(summarise(Path(sys.argv[1]).read_text(), int(sys.argv[2]) if len(sys.argv) > 2 else None)))
