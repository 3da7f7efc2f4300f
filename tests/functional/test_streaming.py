"""Bodies stream through the real proxy: big, chunked, timed and broken ones.

Large transfers are generated and hashed on the fly on the client side, so the
test never holds 100 MB; the proxy worker's RSS is sampled during the transfer to
show the proxy does not hold it either.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import urllib3

from tests.backend import PATTERN
from tests.harness import ANSWER_TIMEOUT, rss_kib

TIMEOUT = ANSWER_TIMEOUT
BIG = 100 * 1024 * 1024
#: What the proxy worker may grow by while relaying BIG bytes.
RSS_BUDGET_KIB = 30 * 1024
BLOCK = PATTERN * 16  # 1 MiB of the backend's pattern
#: Client-side pause per MiB in the big transfers: ~2 s each, so the 0.2 s RSS
#: sampler sees them (loopback alone moves 100 MiB in well under a second), and a
#: proxy that buffered instead of applying backpressure would pile the data up.
PACE = 0.02


def pattern_chunks(n: int, pace: float = 0.0) -> Iterator[bytes]:
    """The bytes of ``tests.backend.pattern_bytes(n)``, 1 MiB at a time."""
    sent = 0
    while sent < n:
        block = BLOCK if n - sent >= len(BLOCK) else BLOCK[: n - sent]
        sent += len(block)
        yield block
        if pace:
            time.sleep(pace)


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for block in pattern_chunks(n):
        digest.update(block)
    return digest.hexdigest()


class SizedBody:
    """An iterable with a length: ``requests`` sends it with Content-Length, not chunked."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[bytes]:
        return pattern_chunks(self.n, PACE)


class RssWatch:
    """Samples the RSS of the proxy's workers every 0.2 s in a thread."""

    def __init__(self, pids: list[int]) -> None:
        assert pids, "no proxy worker to watch"
        self.baseline = {pid: rss_kib(pid) for pid in pids}
        self.peak = dict(self.baseline)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for pid in self.peak:
                try:
                    self.peak[pid] = max(self.peak[pid], rss_kib(pid))
                except (OSError, RuntimeError):
                    continue  # a dead worker fails the transfer itself
            self.samples += 1

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def growth_kib(self) -> int:
        return max(self.peak[pid] - self.baseline[pid] for pid in self.peak)

    def check(self) -> None:
        assert self.samples >= 5, f"only {self.samples} RSS samples: transfer too quick to watch"
        growth = self.growth_kib()
        assert growth < RSS_BUDGET_KIB, (
            f"proxy worker grew by {growth // 1024} MiB while relaying {BIG // 2**20} MiB "
            f"(baseline {self.baseline}, peak {self.peak})")


@pytest.fixture(scope="module")
def big_sha256() -> str:
    return pattern_sha256(BIG)


@pytest.fixture()
def route(rdb, backends, host) -> str:
    rdb.rpush(f"frontend:{host}", "streaming-app", backends[0].url)
    return host


def post_echo(proxy, host: str, data) -> dict:
    with requests.Session() as client:
        response = client.post(f"{proxy.url}/echo", data=data, headers={"Host": host}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text[:500]
    return response.json()


def received(report: dict, name: str) -> list[str]:
    return [value for key, value in report["headers"] if key.lower() == name.lower()]


# ------------------------------------------------------------------- uploads


def test_chunked_upload_arrives_whole(proxy, route):
    pieces = [b"a" * 1, b"b" * 100, b"c" * 70_000, b"d" * 3, b"e" * 200_000]

    def body() -> Iterator[bytes]:
        yield from pieces

    whole = b"".join(pieces)
    report = post_echo(proxy, route, body())
    assert report["body_length"] == len(whole)
    assert report["body_sha256"] == hashlib.sha256(whole).hexdigest()
    assert "chunked" in ",".join(received(report, "Transfer-Encoding")).lower()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_big_upload_is_byte_identical_in_flat_memory(proxy, route, big_sha256, framing):
    data = pattern_chunks(BIG, PACE) if framing == "chunked" else SizedBody(BIG)
    with RssWatch(proxy.worker_pids()) as watch:
        report = post_echo(proxy, route, data)
    assert report["body_length"] == BIG
    assert report["body_sha256"] == big_sha256
    if framing == "content-length":
        assert received(report, "Content-Length") == [str(BIG)]
    watch.check()


# ----------------------------------------------------------------- downloads


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_big_download_is_byte_identical_in_flat_memory(proxy, route, big_sha256, chunked):
    path = f"/bytes/{BIG}" + ("?chunked=1" if chunked else "")
    digest = hashlib.sha256()
    total = 0
    with RssWatch(proxy.worker_pids()) as watch, requests.Session() as client:
        with client.get(f"{proxy.url}{path}", headers={"Host": route}, timeout=TIMEOUT, stream=True) as response:
            assert response.status_code == 200
            if chunked:
                assert response.headers.get("Transfer-Encoding") == "chunked"
            else:
                assert response.headers["Content-Length"] == str(BIG)
            for chunk in response.raw.stream(1 << 20, decode_content=False):
                digest.update(chunk)
                total += len(chunk)
                time.sleep(PACE * len(chunk) / len(BLOCK))
    assert total == BIG
    assert digest.hexdigest() == big_sha256
    watch.check()


def test_response_streams_without_buffering(proxy, route):
    """Pieces sent 1 s apart reach the client about 1 s apart, not all at the end (a second of
    slack for a loaded machine: buffered, they would arrive together after the last was sent)."""
    arrivals: list[float] = []
    sent: list[float] = []
    text = ""
    with requests.get(f"{proxy.url}/drip?count=3&interval=1", headers={"Host": route},
                      timeout=TIMEOUT, stream=True) as response:
        assert response.status_code == 200
        for chunk in response.iter_content(chunk_size=None):
            text += chunk.decode()
            while len(arrivals) < text.count("\n"):
                arrivals.append(time.time())
    for i, line in enumerate(text.splitlines()):
        found = re.fullmatch(rf"piece {i} (\d+\.\d+)", line)
        assert found, f"unexpected piece {line!r}"
        sent.append(float(found.group(1)))
    assert len(sent) == 3
    assert arrivals[0] < sent[-1] - 1.0, "the first piece arrived only after the last was sent"
    assert arrivals[-1] - arrivals[0] > 1.0, f"pieces arrived together: {arrivals}"


# ------------------------------------------------------------ broken backend


def _read_until_close(port: int, request: bytes, deadline: float = ANSWER_TIMEOUT) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed before ``deadline``."""
    data = b""
    end = time.monotonic() + deadline
    with socket.create_connection(("127.0.0.1", port), timeout=deadline) as sock:
        sock.sendall(request)
        while time.monotonic() < end:
            ready, _, _ = select.select([sock], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
    return data, False


def test_backend_reset_mid_body_is_not_a_clean_response(proxy, route):
    promised = 65536 * 10
    # requests sees a broken body...
    with requests.Session() as client, pytest.raises((requests.exceptions.ChunkedEncodingError,
                                                      requests.exceptions.ConnectionError,
                                                      urllib3.exceptions.ProtocolError)):
        response = client.get(f"{proxy.url}/reset?after=65536", headers={"Host": route}, timeout=TIMEOUT)
        response.content  # noqa: B018  (reading the body must raise)
    # ...and on the wire: a short body, then the connection is closed.
    data, closed = _read_until_close(
        proxy.port, f"GET /reset?after=65536 HTTP/1.1\r\nHost: {route}\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert re.search(rb"(?im)^content-length: *%d\r?$" % promised, head), head
    assert len(body) < promised
    assert closed, "the proxy kept the client connection open after a truncated body"
    # The proxy keeps serving.
    for i in range(4):
        with requests.Session() as client:
            response = client.get(f"{proxy.url}/echo?after-reset={i}", headers={"Host": route}, timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.json()["path"] == f"/echo?after-reset={i}"
