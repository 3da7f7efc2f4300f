"""``server.accessLogFormat: json``: one parseable object per line, the combined format's fields."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from cjs_proxy.pipeline.accesslog import AccessEntry, AccessLog, format_json, format_line, iso_time, local_time

#: What a combined line holds, in the names the JSON object uses.
COMBINED_FIELDS = {"remote_addr", "time", "method", "uri", "protocol", "status", "bytes_sent", "referer",
                   "user_agent", "vhost", "upstream", "request_time", "upstream_time", "request_id", "extra"}


def entry(**overrides: object) -> AccessEntry:
    values: dict[str, object] = dict(
        remote_addr="10.0.0.1", method="GET", uri="/a?b=1", protocol="HTTP/1.1", status=200, bytes_sent=512,
        referer="-", user_agent="curl/8", vhost="shop", upstream="10.0.0.9:8080", request_time=0.0123456,
        upstream_time=0.01, request_id="abc123", started=971185536.25, limit="allowed")
    values.update(overrides)
    return AccessEntry(**values)  # type: ignore[arg-type]


def test_json_line_exact(utc: None) -> None:
    e = entry()
    line = format_json(e, iso_time(e.started))
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "time": "2000-10-10T13:45:36.250+00:00", "remote_addr": "10.0.0.1", "method": "GET", "uri": "/a?b=1",
        "protocol": "HTTP/1.1", "status": 200, "bytes_sent": 512, "referer": "-", "user_agent": "curl/8",
        "vhost": "shop", "upstream": "10.0.0.9:8080", "request_time": 0.012346, "upstream_time": 0.01,
        "request_id": "abc123", "limit": "allowed", "extra": ""}


def test_json_carries_every_combined_field() -> None:
    e = entry()
    record = json.loads(format_json(e, iso_time(e.started)))
    assert COMBINED_FIELDS <= set(record)
    combined = format_line(e, local_time(e.started))
    for name in ("remote_addr", "method", "uri", "vhost", "upstream", "request_id"):
        assert str(record[name]) in combined


def test_iso_time_has_an_offset() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", iso_time(time.time()))


@pytest.mark.parametrize("value", ["a\nb", 'quote " and \\', "caf\u00e9", "\x00\x1b[31m", "\u2028"])
def test_values_from_clients_and_redis_stay_on_one_line(value: str) -> None:
    e = entry(vhost=value, user_agent=value, uri="/" + value)
    line = format_json(e, iso_time(e.started))
    assert line.count("\n") == 1 and line.isascii()
    record = json.loads(line)
    assert record["vhost"] == value and record["user_agent"] == value


def test_missing_upstream_time_is_null() -> None:
    e = entry(upstream_time=None, upstream="-")
    assert json.loads(format_json(e, iso_time(e.started)))["upstream_time"] is None


def test_json_log_file_is_reopened_like_combined(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "json")
    log.write(entry())
    os.rename(path, tmp_path / "access.log.1")
    log.reopen()
    log.write(entry(status=404))
    log.close()
    assert json.loads((tmp_path / "access.log.1").read_text())["status"] == 200
    assert json.loads(path.read_text())["status"] == 404
