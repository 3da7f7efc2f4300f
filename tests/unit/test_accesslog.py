"""The access log: nginx combined + vhost/upstream/timings, escaping, and logrotate reopen."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from select import PIPE_BUF
from typing import Any

import gevent
import pytest

from cjs_proxy.pipeline.accesslog import AccessEntry, AccessLog, _chunks, format_line, local_time

STAMP = "10/Oct/2000:13:55:36 -0700"


def entry(**overrides: Any) -> AccessEntry:
    values: dict[str, Any] = {
        "remote_addr": "203.0.113.9", "method": "GET", "uri": "/path?q=1", "protocol": "HTTP/1.1",
        "status": 200, "bytes_sent": 512, "referer": "http://ref.example/", "user_agent": "curl/8.0",
        "vhost": "app", "upstream": "http://10.0.0.1:8080", "request_time": 0.0123,
        "upstream_time": 0.01, "request_id": "abc123", "started": 971211336.0,
    }
    values.update(overrides)
    return AccessEntry(**values)


def test_format_line_exact() -> None:
    assert format_line(entry(), STAMP) == (
        '203.0.113.9 - - [10/Oct/2000:13:55:36 -0700] "GET /path?q=1 HTTP/1.1" 200 512 '
        '"http://ref.example/" "curl/8.0" "app" http://10.0.0.1:8080 0.012 0.010 abc123\n'
    )


def test_format_line_is_nginx_combined_then_extra_fields() -> None:
    combined = re.compile(
        r'(?P<addr>\S+) - - \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) '
        r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"'
        r' "(?P<vhost>[^"]*)" (?P<upstream>\S+) (?P<rt>\d+\.\d{3}) (?P<ut>\d+\.\d{3}|-) (?P<rid>\S+)\n\Z')
    match = combined.match(format_line(entry(), STAMP))
    assert match is not None
    assert match["request"] == "GET /path?q=1 HTTP/1.1"
    assert match["vhost"] == "app"
    assert match["rid"] == "abc123"


def test_missing_upstream_time_is_a_dash() -> None:
    line = format_line(entry(upstream_time=None, upstream="-", vhost="-"), STAMP)
    assert line.endswith(' "-" - 0.012 - abc123\n')


def test_zero_upstream_time_is_not_a_dash() -> None:
    assert " 0.000 abc123\n" in format_line(entry(upstream_time=0.0), STAMP)


def test_empty_referer_and_agent_are_dashes() -> None:
    line = format_line(entry(referer="", user_agent=""), STAMP)
    assert ' 200 512 "-" "-" "app" ' in line


def test_times_are_rounded_to_milliseconds() -> None:
    line = format_line(entry(request_time=1.23456, upstream_time=2.5), STAMP)
    assert " 1.235 2.500 " in line


@pytest.mark.parametrize(("field", "value", "escaped"), [
    ("uri", '/a"b', "/a\\x22b"),
    ("uri", "/a\\b", "/a\\x5Cb"),
    ("uri", "/a\x1bb", "/a\\x1Bb"),
    ("uri", "/a\x7fb", "/a\\x7Fb"),
    ("method", 'G"ET', "G\\x22ET"),
    ("referer", 'x" "injected', "x\\x22 \\x22injected"),
    ("user_agent", "agent\nsecond line", "agent\\x0Asecond line"),
    ("user_agent", "tab\there", "tab\\x09here"),
    ("vhost", 'my"app', "my\\x22app"),
])
def test_quoted_fields_are_escaped(field: str, value: str, escaped: str) -> None:
    line = format_line(entry(**{field: value}), STAMP)
    assert escaped in line
    assert line.count("\n") == 1
    assert line.count('"') == 8  # four quoted fields, nothing else


def test_plain_values_are_not_escaped() -> None:
    line = format_line(entry(uri="/a b/%22?x=1&y='z'"), STAMP)
    assert '"GET /a b/%22?x=1&y=\'z\' HTTP/1.1"' in line


def test_local_time_format(utc: None) -> None:
    assert local_time(0) == "01/Jan/1970:00:00:00 +0000"
    assert local_time(971211336.9) == "10/Oct/2000:20:55:36 +0000"


def test_local_time_shape() -> None:
    assert re.fullmatch(r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}", local_time(time.time()))


# ------------------------------------------------------------------------ AccessLog


def test_access_log_writes_lines(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    try:
        log.write(entry(started=0.5))
        log.write(entry(started=1.0, status=404, uri="/second"))
    finally:
        log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert "[01/Jan/1970:00:00:00 +0000]" in lines[0]
    assert "[01/Jan/1970:00:00:01 +0000]" in lines[1]
    assert '"GET /second HTTP/1.1" 404 ' in lines[1]


def test_access_log_appends(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("existing line\n", encoding="utf-8")
    log = AccessLog(str(path))
    log.write(entry())
    log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "existing line"
    assert len(lines) == 2


def test_access_log_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "new.log"
    log = AccessLog(str(path))
    log.close()
    assert path.exists()


def test_reopen_after_rename_writes_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    log = AccessLog(str(path))
    try:
        log.write(entry(uri="/before"))
        path.rename(rotated)
        log.write(entry(uri="/between"))  # still the old file until reopened
        log.reopen()
        log.write(entry(uri="/after"))
    finally:
        log.close()
    old = rotated.read_text(encoding="utf-8")
    new = path.read_text(encoding="utf-8")
    assert "/before" in old and "/between" in old and "/after" not in old
    assert new.count("\n") == 1 and "/after" in new


def test_reopen_closes_the_previous_descriptor(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "access.log"))
    first = log.fd
    assert first is not None
    log.reopen()
    try:
        assert log.fd != first
        with pytest.raises(OSError):
            os.fstat(first)
    finally:
        log.close()


def test_non_utf8_safe_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.write(entry(uri="/caf\xe9"))
    log.close()
    assert path.read_bytes().count(b"\n") == 1


def test_disabled_access_log_writes_nothing(tmp_path: Path) -> None:
    log = AccessLog(None)
    assert log.fd is None
    log.write(entry())
    log.reopen()
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_dash_writes_to_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    log = AccessLog("-")
    log.write(entry(uri="/to-stdout"))
    log.reopen()
    log.close()  # must not close stdout
    os.fstat(1)
    out = capfd.readouterr().out
    assert '"GET /to-stdout HTTP/1.1" 200 512' in out


def test_the_lines_of_one_loop_turn_leave_in_one_write_at_its_end(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(data.count(b"\n"))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    try:
        gevent.joinall([gevent.spawn(log.write, entry(uri=f"/{i}")) for i in range(5)])
        assert writes == [5]  # five greenlets of one turn: one write
        assert path.read_text(encoding="utf-8").count("\n") == 5
        log.write(entry(uri="/next-turn"))
        assert writes == [5]  # kept until this turn is over...
        gevent.sleep(0)
        assert writes == [5, 1]  # ...and not a moment longer
    finally:
        log.close()


def test_to_stdout_no_write_is_larger_than_a_pipe_keeps_whole() -> None:
    lines = [f"{i:05d} " + "x" * 300 + "\n" for i in range(40)]
    chunks = _chunks(lines, PIPE_BUF)
    assert all(len(chunk) <= PIPE_BUF for chunk in chunks) and len(chunks) > 1
    assert b"".join(chunks).decode() == "".join(lines)  # every line whole, in order
    assert _chunks(["y" * (PIPE_BUF + 1)], PIPE_BUF) == [b"y" * (PIPE_BUF + 1)]  # a long line alone
