"""The benchmark's pure logic: open-loop figures, issue 12's and 15's target checks, policy ratios.

The bench modules live in bench/ and import each other by name (bench/run.py is a
script), so that folder goes on the path here as it does when the script runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import balance_cost
import openloop
import targets

LINE = ("OPENLOOP requests=9266 duration_s=3.100 rate=2989.0 p50_us=87 p90_us=178 p99_us=448 p999_us=1714 "
        "max_us=4091 late=4 bad_status=1 socket_errors=2 conn_p50_min_us=76 conn_p50_median_us=89 "
        "conn_p50_max_us=105\n")


def test_parse_reads_the_openloop_line_in_milliseconds() -> None:
    figures = openloop.parse("Running 3s test @ http://x/\n" + LINE + "Requests/sec: 2989\n")
    assert figures["requests"] == 9266 and figures["late"] == 4
    assert figures["p99_ms"] == 0.448 and figures["p999_ms"] == 1.714 and figures["conn_p50_max_ms"] == 0.105
    assert figures["rate"] == 2989.0 and figures["bad_status"] == 1 and figures["socket_errors"] == 2


def test_parse_refuses_output_without_the_line() -> None:
    with pytest.raises(ValueError):
        openloop.parse("Requests/sec: 2989\n")


def test_script_spreads_the_rate_over_the_connections(tmp_path: Path) -> None:
    # 50 connections at 2,000 req/s: each connection sends every 25 ms.
    assert "local interval_us = 25000.0" in openloop.write_script(tmp_path / "a.lua", 2000, 50).read_text()
    assert "local interval_us = 0.0" in openloop.write_script(tmp_path / "b.lua", None, 50).read_text()


def wrk(rps: float, cpu: float, p50: float = 1.0, p99: float = 2.0) -> dict[str, Any]:
    return {"rps": rps, "cpu_us_per_req": cpu, "p50_ms": p50, "p99_ms": p99}


def run_data(full_rps: float = 5000, full_cpu: float = 250, plain_cpu: float = 230, one_p50: float = 0.45,
             open_p99: float = 4.0, balance_worst: float = 1.04, close_rps: float = 3000) -> dict[str, Any]:
    scenarios = [
        {"name": "get-keepalive", "targets": {"cjs-proxy": wrk(6000, plain_cpu), "gevent-floor": wrk(10000, 100)}},
        {"name": "get-close", "targets": {"cjs-proxy": wrk(3000, 400), "gevent-floor": wrk(6000, 200)}},
        {"name": "rate-limits", "targets": {"cjs-proxy": wrk(full_rps, full_cpu)}},
        {"name": "rate-limits-close", "targets": {"cjs-proxy": wrk(close_rps, 420)}},
        {"name": "rate-limits-one-connection", "targets": {"cjs-proxy": wrk(2000, 300, p50=one_p50)}},
    ]
    half = {"target": "cjs-proxy", "load": "50%", "p50_ms": 0.6, "p99_ms": open_p99, "p999_ms": 9.0,
            "offered_rate": 2500, "rate": 2490}
    balance = balance_cost.summarise({
        "random": [{"cpu_us_per_req": 100.0, "rps": 1, "errors": 0}],
        "p2c": [{"cpu_us_per_req": 100.0 * balance_worst, "rps": 1, "errors": 0}]})
    return {"scenarios": scenarios, "openloop": {"runs": [half]}, "balance": balance}


def test_every_target_met_at_its_bound() -> None:
    rows = targets.check(run_data())
    assert [row["status"] for row in rows] == ["met"] * 7
    assert rows[0]["value"] == 0.5 and rows[1]["value"] == 2.5  # 5,000 / 10,000 req/s; 250 / 100 µs


def test_each_target_fails_past_its_bound() -> None:
    checks = targets.check(run_data(full_rps=4999, full_cpu=251, plain_cpu=228, one_p50=0.5, open_p99=5.0,
                                    balance_worst=1.06, close_rps=2999))
    assert [row["status"] for row in checks] == ["not met"] * 7, checks


def test_limits_cost_is_over_the_limits_off_path() -> None:
    row = next(r for r in targets.check(run_data(full_cpu=250, plain_cpu=200)) if r["target"].startswith("limits"))
    assert row["value"] == 0.25 and row["status"] == "not met"


def test_missing_scenarios_are_left_out_not_failed() -> None:
    assert targets.check({"scenarios": []}) == []


def test_anchors_are_throughput_over_the_floor_beside_hipache() -> None:
    rows = {row["mode"]: row for row in targets.anchors(run_data())}
    assert rows["keep-alive"]["hipache"] == 0.17 and rows["keep-alive"]["full_path"] == 0.5
    assert rows["keep-alive"]["limits_off"] == 0.6
    assert rows["Connection: close"]["full_path"] == 0.5


def test_the_worst_policy_is_never_random_itself() -> None:
    data = run_data(balance_worst=0.9)  # p2c cheaper than random: still the one reported
    row = next(r for r in targets.check(data) if r["target"].startswith("balancing"))
    assert row["detail"].startswith("p2c:") and row["value"] == pytest.approx(-0.1)


def test_policies_are_compared_with_random_medians() -> None:
    summary = balance_cost.summarise({
        "random": [{"cpu_us_per_req": v, "rps": 1, "errors": 0} for v in (100.0, 300.0, 200.0)],
        "sticky": [{"cpu_us_per_req": v, "rps": 1, "errors": 0} for v in (215.0, 205.0, 900.0)]})
    assert summary["policies"]["random"]["cpu_us_per_req"] == 200
    assert summary["policies"]["sticky"]["cpu_vs_random"] == 1.075
    assert summary["policies"]["sticky"]["within_target"] is False
    assert any("| sticky | 215 | 1.075 |" in line for line in balance_cost.markdown(summary))
