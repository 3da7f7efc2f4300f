"""Issue 12's and issue 15's targets, checked against one `make bench` run, and their tables.

Issue 12 states its targets as ratios to the gevent floor *of the same run* (gunicorn's
gevent worker answering by itself), because absolute figures do not travel between
machines; "full path" is the rate-limited proxy (route + dead filter + per-IP, global
per-IP and tier limits + access log). Hipache's ratios are quoted from the issue
(Hipache 0.4.0 on Node 20, measured once on a 2-core machine; it cannot be installed
here) so ours can be read beside them.
"""

from __future__ import annotations

from typing import Any

import balance_cost

PROXY, FLOOR = "cjs-proxy", "gevent-floor"
#: Hipache's throughput as a ratio to the floor, from issue 12's table (quoted constants).
HIPACHE_ANCHORS = {"keep-alive": 0.17, "Connection: close": 0.32}


def _figures(data: dict[str, Any], scenario: str, target: str) -> dict[str, Any] | None:
    entry = next((s for s in data["scenarios"] if s["name"] == scenario), None)
    return entry["targets"].get(target) if entry else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _open_loop(data: dict[str, Any], target: str, load: str) -> dict[str, Any] | None:
    runs = (data.get("openloop") or {}).get("runs", [])
    return next((r for r in runs if r["target"] == target and r["load"] == load), None)


def check(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what was measured, the goal, and met / not met (n/a when not measured)."""
    rows: list[dict[str, Any]] = []

    def add(target: str, value: float | None, goal: str, ok: bool | None, detail: str) -> None:
        rows.append({"target": target, "value": None if value is None else round(value, 3), "goal": goal,
                     "detail": detail, "status": "n/a" if ok is None else ("met" if ok else "not met")})

    full_ka, floor_ka = _figures(data, "rate-limits", PROXY), _figures(data, "get-keepalive", FLOOR)
    plain_ka = _figures(data, "get-keepalive", PROXY)
    full_close, floor_close = _figures(data, "rate-limits-close", PROXY), _figures(data, "get-close", FLOOR)
    full_one = _figures(data, "rate-limits-one-connection", PROXY)

    if full_ka and floor_ka:
        ratio = _div(full_ka["rps"], floor_ka["rps"])
        add("full path, keep-alive: throughput", ratio, ">= 0.50x floor", ratio is not None and ratio >= 0.5,
            f"{full_ka['rps']:,.0f} / {floor_ka['rps']:,.0f} req/s")
        ratio = _div(full_ka.get("cpu_us_per_req"), floor_ka.get("cpu_us_per_req"))
        add("full path, keep-alive: CPU per request", ratio, "<= 2.50x floor", ratio is not None and ratio <= 2.5,
            f"{full_ka.get('cpu_us_per_req', 0):.0f} / {floor_ka.get('cpu_us_per_req', 0):.0f} µs")
    if full_close and floor_close:
        ratio = _div(full_close["rps"], floor_close["rps"])
        add("full path, Connection: close: throughput", ratio, ">= 0.50x floor (close)",
            ratio is not None and ratio >= 0.5, f"{full_close['rps']:,.0f} / {floor_close['rps']:,.0f} req/s")
    if full_ka and plain_ka:
        ratio = _div(full_ka.get("cpu_us_per_req"), plain_ka.get("cpu_us_per_req"))
        cost = None if ratio is None else ratio - 1
        add("limits cost, keep-alive: CPU per request over limits off", cost, "<= +10%",
            cost is not None and cost <= 0.10,
            f"{full_ka.get('cpu_us_per_req', 0):.0f} vs {plain_ka.get('cpu_us_per_req', 0):.0f} µs "
            "(two runs minutes apart; bench/limits_cost.py interleaves)")
    if full_one:
        add("full path, one connection: p50", full_one["p50_ms"], "< 0.5 ms", full_one["p50_ms"] < 0.5,
            f"p99 {full_one['p99_ms']:.2f} ms, {full_one['rps']:,.0f} req/s")
    half = _open_loop(data, PROXY, "50%")
    if half:
        add("full path, open loop at 50% of capacity: p99", half["p99_ms"], "< 5 ms", half["p99_ms"] < 5,
            f"offered {half['offered_rate']:,.0f}, achieved {half['rate']:,.0f} req/s; p50 {half['p50_ms']:.2f}, "
            f"p99.9 {half['p999_ms']:.2f} ms")
    balance = data.get("balance")
    if balance:
        others = {name: f for name, f in balance["policies"].items() if name != "random"} or balance["policies"]
        worst, figures = max(others.items(), key=lambda item: item[1]["cpu_vs_random"])
        cost = figures["cpu_vs_random"] - 1
        add("balancing policies (issue 15): CPU per request over random, worst", cost,
            f"<= +{balance['max_cost']:.0%}", cost <= balance["max_cost"],
            f"{worst}: {figures['cpu_us_per_req']:.0f} vs {balance['policies']['random']['cpu_us_per_req']:.0f} µs")
    return rows


def _value(row: dict[str, Any]) -> str:
    value = row["value"]
    if value is None:
        return "-"
    if "ms" in row["goal"]:
        return f"{value:.2f} ms"
    if "%" in row["goal"]:
        return f"{value:+.1%}"
    return f"{value:.2f}x"


def anchors(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Throughput ÷ floor in the same run, ours (full path, limits off) beside Hipache's quoted ratio."""
    rows = []
    for mode, (full_name, plain_name, floor_name) in {
            "keep-alive": ("rate-limits", "get-keepalive", "get-keepalive"),
            "Connection: close": ("rate-limits-close", "get-close", "get-close")}.items():
        floor = _figures(data, floor_name, FLOOR)
        full, plain = _figures(data, full_name, PROXY), _figures(data, plain_name, PROXY)
        if not floor:
            continue
        rows.append({"mode": mode, "hipache": HIPACHE_ANCHORS[mode],
                     "full_path": _div(full and full["rps"], floor["rps"]),
                     "limits_off": _div(plain and plain["rps"], floor["rps"])})
    return rows


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(data: dict[str, Any]) -> list[str]:
    """The open-loop, saturation, balancing and targets tables (the end of the report)."""
    lines: list[str] = []
    openloop = data.get("openloop")
    if openloop:
        cap = openloop["capacity"]
        lines += ["", "## Open-loop latency (constant offered rate, corrected for coordinated omission)", "",
                  f"Capacity measured closed-loop above: full path {cap[PROXY]:,.0f} req/s (rate-limits, keep-alive), "
                  f"floor {cap[FLOOR]:,.0f} req/s. wrk, one connection per thread, each connection on its own "
                  "schedule; a request that leaves late (the previous answer came after its due time) is timed "
                  "from its due time (bench/openloop.py). `check`: the generator alone against the backend at "
                  "the highest rates offered. `closed`: the same script as fast as it goes, with how the "
                  "connections' own medians spread.", "",
                  "| target | load | offered req/s | achieved | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | "
                  "late | errors | conn p50 min / med / max ms | CPU µs/req | worker waiting for a CPU | wrk CPU | "
                  "others' CPU |",
                  "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|"]
        for r in openloop["runs"]:
            offered = "-" if r["offered_rate"] is None else f"{r['offered_rate']:,.0f}"
            cpu = r.get("cpu_us_per_req")
            lines.append(
                f"| {r['target']} | {r['load']} | {offered} | {r['rate']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['max_ms']:.1f} | {r['late']} | "
                f"{r['errors']} | {r['conn_p50_min_ms']:.2f} / {r['conn_p50_median_ms']:.2f} / "
                f"{r['conn_p50_max_ms']:.2f} | {'-' if cpu is None else f'{cpu:.0f}'} | "
                f"{_pct(r.get('worker_runqueue_share'))} | {r['wrk_cpu_share']:.0%} | {r['foreign_cpu_share']:.0%} |")
    lines += _saturation(data)
    if data.get("balance"):
        lines += ["", "## Balancing policies: CPU per request beside random (issue 15)", ""]
        lines += balance_cost.markdown(data["balance"])
    rows = data.get("targets_issue12") or []
    if rows:
        lines += ["", "## Targets of issue 12 (ratios to the floor of this run) and issue 15", "",
                  "| target | measured | goal | status | detail |", "|---|--:|---|---|---|"]
        lines += [f"| {r['target']} | {_value(r)} | {r['goal']} | **{r['status']}** | {r['detail']} |" for r in rows]
    anchor_rows = data.get("anchors") or []
    if anchor_rows:
        lines += ["", "Throughput ÷ floor, same run, beside Hipache's (issue 12's figures, quoted: Hipache 0.4.0 "
                      "is not installable here):", "",
                  "| mode | Hipache (quoted) | cjs-proxy full path | ÷ Hipache | cjs-proxy limits off | ÷ Hipache |",
                  "|---|--:|--:|--:|--:|--:|"]
        for a in anchor_rows:
            lines.append(f"| {a['mode']} | {a['hipache']:.2f}x | {_x(a['full_path'])} | "
                         f"{_x(_div(a['full_path'], a['hipache']))} | {_x(a['limits_off'])} | "
                         f"{_x(_div(a['limits_off'], a['hipache']))} |")
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _saturation(data: dict[str, Any]) -> list[str]:
    """Keep-alive at saturation: the p99/p50 shape beside how the work fell on the workers and wrk's share."""
    rows = [("get-keepalive", PROXY), ("get-keepalive", FLOOR), ("rate-limits", PROXY)]
    lines = ["", "## Keep-alive at saturation: p99 ÷ p50, workers and the load generator", "",
             "Worker CPU split: each worker's share of the workers' CPU during the run; connections per worker: "
             "established client connections each worker held half-way through (`ss -tnp`); wrk CPU: its share "
             "of the machine (2 CPUs = 100%); on CPU / waiting for a CPU: the share of the run a worker spent running, "
             "and runnable but kept off the CPUs by the scheduler (`/proc/<pid>/schedstat`, mean of the workers).",
             "",
             "| scenario | target | p50 ms | p99 ms | p99 ÷ p50 | worker CPU split | connections per worker | "
             "worker on CPU | worker waiting for a CPU | wrk CPU | others' CPU |",
             "|---|---|--:|--:|--:|---|---|--:|--:|--:|--:|"]
    for scenario, target in rows:
        f = _figures(data, scenario, target)
        if not f:
            continue
        split = " / ".join(f"{s:.0%}" for s in f.get("worker_cpu_split", [])) or "-"
        conns = " / ".join(str(c) for c in f.get("connections_per_worker", [])) or "-"
        wrk = f.get("wrk_cpu_share")
        lines.append(f"| {scenario} | {target} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | "
                     f"{_x(_div(f['p99_ms'], f['p50_ms']))} | {split} | {conns} | "
                     f"{_pct(f.get('worker_oncpu_share'))} | {_pct(f.get('worker_runqueue_share'))} | "
                     f"{_pct(wrk)} | {f.get('foreign_cpu_share', 0):.0%} |")
    return lines
