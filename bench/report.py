"""The benchmark's outputs: ratios to the direct backend and to nginx, the targets, a Markdown report, a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyspy_summary
import targets

PROXY, DIRECT, NGINX, FLOOR = "cjs-proxy", "direct", "nginx", "gevent-floor"
TARGETS = (DIRECT, NGINX, PROXY, FLOOR)
#: Ratio name -> key in a target's figures (None: requests/s or MiB/s, whichever the scenario has).
RATIO_KEYS = {"throughput": None, "p50": "p50_ms", "p99": "p99_ms", "cpu_per_req": "cpu_us_per_req",
              "worker_rss": "rss_after_mib"}


def throughput(figures: dict[str, Any]) -> float | None:
    return figures.get("rps", figures.get("mib_s"))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def add_ratios(data: dict[str, Any]) -> None:
    """Each scenario gets ``ratios``: the proxy's figures divided by direct's and by nginx's."""
    for entry in data["scenarios"]:
        proxy = entry["targets"].get(PROXY)
        if not proxy:
            continue
        entry["ratios"] = {}
        for other in (DIRECT, NGINX):
            base = entry["targets"].get(other, {})
            entry["ratios"][f"vs_{other}"] = {
                name: _ratio(throughput(proxy), throughput(base)) if key is None
                else _ratio(proxy.get(key), base.get(key))
                for name, key in RATIO_KEYS.items()}


def _scenario(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in data["scenarios"] if s["name"] == name), None)


def check_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The hot-path budget of issue 7 / performance-notes.md, against this run's figures.

    "Full path on" (route lookup, dead filter, IP and tier limits, access log) is the
    rate-limits scenario; its cost is compared with the keep-alive scenario.
    """
    checks: list[dict[str, Any]] = []

    def add(target: str, measured: str, ok: bool | None) -> None:
        checks.append({"target": target, "measured": measured,
                       "status": "n/a" if ok is None else ("met" if ok else "not met")})

    limited = _scenario(data, "rate-limits")
    plain = _scenario(data, "get-keepalive")
    full = limited["targets"][PROXY] if limited else None
    if full:
        add(">= 10,000 req/s, 2 workers, full path, 50 keep-alive connections",
            f"{full['rps']:,.0f} req/s", full["rps"] >= 10_000)
        add("p99 < 12 ms (same run)", f"{full['p99_ms']:.2f} ms", full["p99_ms"] < 12)
        add("proxy CPU < 150 us per request (master + workers)", f"{full.get('cpu_us_per_req', 0):.0f} us",
            full.get("cpu_us_per_req", 1e9) < 150)
    if full and plain:
        base = plain["targets"][PROXY]
        lost = 1 - full["rps"] / base["rps"]
        more_cpu = full.get("cpu_us_per_req", 0) / base.get("cpu_us_per_req", 1) - 1
        add("rate limits cost <= 10% (throughput lost and CPU per request added)",
            f"throughput {-lost:+.1%} ({base['rps']:,.0f} -> {full['rps']:,.0f} req/s), CPU/req {more_cpu:+.1%} "
            f"({base.get('cpu_us_per_req', 0):.0f} -> {full.get('cpu_us_per_req', 0):.0f} us)",
            lost <= 0.10 and more_cpu <= 0.10)
    for entry in data["scenarios"]:
        if entry["kind"] != "transfer":
            continue
        proxy, direct = entry["targets"][PROXY], entry["targets"][DIRECT]
        share = proxy["mib_s"] / direct["mib_s"] if direct["mib_s"] else 0
        add(f"{entry['name']}: >= 50% of direct throughput", f"{share:.0%} ({proxy['mib_s']:,.0f} of "
            f"{direct['mib_s']:,.0f} MiB/s)", share >= 0.5)
        growth = proxy["rss_peak_mib"] - proxy["rss_before_mib"]
        add(f"{entry['name']}: worker RSS growth < 20 MiB", f"{growth:+.1f} MiB (peak, both workers)", growth < 20)
    served = sum(s["targets"][PROXY].get("requests", 0) for s in data["scenarios"]
                 if not s["name"].startswith("rate-limits"))
    first = data["scenarios"][0]["targets"][PROXY]["rss_before_mib"] if data["scenarios"] else None
    add("worker RSS flat over 1M requests", f"not measured here: {served:,} requests, RSS {first} -> "
        f"{data.get('proxy_final_rss_mib')} MiB over the run", None)
    return checks


# ------------------------------------------------------------------------- markdown


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(data: dict[str, Any]) -> str:
    m, s, git = data["machine"], data["settings"], data["git"]
    changed = f" + {len(git['changed_files'])} uncommitted files" if git["changed_files"] else ""
    lines = [
        f"# cjs-proxy benchmark {data['date']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}. Commit {git['commit'][:10]}{changed}.",
        f"Load: wrk, {s['duration']:g} s per run, {s['connections']} connections, {s['wrk_threads']} threads, "
        f"on the same machine; {s['transfer_mib']} MiB transfers by a Python client. "
        f"Every server and wrk share the {m['nproc']} CPUs. Run took {data['elapsed_s']:.0f} s.",
        "Targets: `direct` = the nginx backend alone; `nginx` = nginx (2 workers) proxying to it; "
        "`cjs-proxy` = 2 gevent workers, Redis route lookup per request, access log on; "
        "`gevent-floor` = gunicorn's gevent worker (2) answering by itself, proxying nothing.",
        "CPU/req is the server's own (master + workers; for nginx without its backend), "
        "RSS the sum over its workers.",
        "",
        "## Figures",
        "",
        "| scenario | target | req/s (MiB/s) | p50 ms | p99 ms | errors | worker RSS MiB before → after (peak) "
        "| CPU µs/req | Redis CPU µs/req | others' CPU |",
        "|---|---|--:|--:|--:|--:|---|--:|--:|--:|",
    ]
    for entry in data["scenarios"]:
        for name in TARGETS:
            f = entry["targets"].get(name)
            if not f:
                continue
            rate = _num(f["rps"]) if "rps" in f else f"{_num(f['mib_s'])} MiB/s"
            lines.append(
                f"| {entry['name']} | {name} | {rate} | {_num(f.get('p50_ms'), '{:.2f}')} | "
                f"{_num(f.get('p99_ms'), '{:.2f}')} | {f['errors']} | {f['rss_before_mib']} → {f['rss_after_mib']} "
                f"({f['rss_peak_mib']}) | {_num(f.get('cpu_us_per_req'))} | {_num(f.get('redis_cpu_us_per_req'))} | "
                f"{_num(f.get('foreign_cpu_share'), '{:.0%}')} |")
    foreign = [f.get("foreign_cpu_share") or 0 for e in data["scenarios"] for f in e["targets"].values()]
    if foreign and max(foreign) > 0.05:
        lines += ["", f"**Noisy run**: processes outside this benchmark used up to {max(foreign):.0%} of the machine's "
                      f"CPU during a measurement (`others' CPU`); rerun on an idle machine for steady figures."]
    lines += ["", "## cjs-proxy as a ratio: ÷ direct / ÷ nginx, same run", "",
              "Throughput below 1 is slower; latency, CPU and RSS above 1 are more.", "",
              "| scenario | throughput | p50 | p99 | CPU/req | worker RSS |", "|---|---|---|---|---|---|"]
    for entry in data["scenarios"]:
        r = entry.get("ratios")
        if not r:
            continue
        cells = [f"{_x(r['vs_direct'][k])} / {_x(r['vs_nginx'][k])}" for k in RATIO_KEYS]
        lines.append(f"| {entry['name']} | " + " | ".join(cells) + " |")
    for name, mode in (("get-keepalive", "keep-alive"), ("get-close", "Connection: close")):
        entry = _scenario(data, name)
        floor = entry["targets"].get(FLOOR) if entry else None
        if floor and entry:
            proxy = entry["targets"][PROXY]
            lines += ["", f"Against the gevent floor ({mode}, limits off): throughput "
                          f"{_x(_ratio(proxy['rps'], floor['rps']))}, CPU/req "
                          f"{_x(_ratio(proxy.get('cpu_us_per_req'), floor.get('cpu_us_per_req')))} "
                          f"(floor: {floor['rps']:,.0f} req/s, {_num(floor.get('cpu_us_per_req'))} µs/req)."]
    lines += ["", "## Targets of issue 7 (absolute figures set on another machine; performance-notes.md)", "",
              "| target | measured | status |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['measured']} | {c['status']} |" for c in data.get("targets", [])]
    profile = data.get("profile")
    if profile:
        lines += ["", "## Where a worker's time goes (py-spy, small GET keep-alive)", ""]
        lines.append(f"py-spy failed: {profile['error']}\n" if "error" in profile
                     else pyspy_summary.markdown(profile))
    problems = {name: n for name, n in data.get("proxy_log_problems", {}).items() if n}
    if problems:
        lines += ["", f"Warnings, errors or tracebacks in the proxy logs: {problems} (see the run folder)."]
    lines += ["", "Scenarios:", ""]
    lines += [f"- `{e['name']}`: {e['title']}" for e in data["scenarios"]]
    lines += targets.markdown(data)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- chart


def chart(data: dict[str, Any], path: Path) -> bool:
    """Throughput and p99 per scenario and target (log scales), transfers apart; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrk = [e for e in data["scenarios"] if e["kind"] == "wrk"]
    transfers = [e for e in data["scenarios"] if e["kind"] == "transfer"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), gridspec_kw={"width_ratios": [3, 3, 1.4]})
    colors = {DIRECT: "#9e9e9e", NGINX: "#2e7d32", PROXY: "#1565c0", FLOOR: "#f9a825"}
    width = 0.2
    panels = ((axes[0], wrk, "rps", "requests/s (log)", True), (axes[1], wrk, "p99_ms", "p99 latency, ms (log)", True),
              (axes[2], transfers, "mib_s", "MiB/s, one transfer", False))
    for ax, entries, key, label, log in panels:
        for i, name in enumerate(TARGETS):
            xs = [j + (i - 1.5) * width for j in range(len(entries))]
            values = [e["targets"].get(name, {}).get(key) for e in entries]
            if not any(values):
                continue
            bars = ax.bar(xs, [v or float("nan") for v in values], width, label=name, color=colors[name])
            ax.bar_label(bars, labels=[_short(v) if v else "" for v in values], fontsize=6, rotation=90, padding=2)
        ax.set_xticks(range(len(entries)), [e["name"] for e in entries], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.25)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(f"cjs-proxy vs direct backend vs nginx, {data['date']}, {m['nproc']} CPUs ({m['cpu_model']}), "
                 f"wrk {data['settings']['connections']} connections", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.3g}"
