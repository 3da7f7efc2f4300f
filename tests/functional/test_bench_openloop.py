"""bench/openloop.py's wrk script against a server that stalls once: the stall is counted.

A closed-loop client sends nothing while the server stalls, so a 500 ms stall shows up
as one slow request (coordinated omission). At a constant offered rate, every request
due during the stall waits for it too; the script times those from their due time, so
about a quarter of the requests of this run come out slow. Real processes: wrk and a
small keep-alive server in a thread; each run is 2 s at 100 requests/s on one connection.
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import openloop

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")

STALL_S = 0.5
#: The request (counted from the first) the server answers only after the stall.
STALL_AT = 50
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class StallingServer:
    """Answers every keep-alive request at once, except the ``STALL_AT``-th, which waits ``STALL_S``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.2)
        self.served = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        buffered = b""
        with conn:
            conn.settimeout(10)
            while not self.stopping.is_set():
                while b"\r\n\r\n" not in buffered:
                    try:
                        data = conn.recv(4096)
                    except OSError:
                        return
                    if not data:
                        return
                    buffered += data
                _, _, buffered = buffered.partition(b"\r\n\r\n")
                with self.lock:
                    self.served += 1
                    stall = self.served == STALL_AT
                if stall:
                    time.sleep(STALL_S)
                conn.sendall(RESPONSE)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


@pytest.mark.parametrize("rate", [100.0, None], ids=["open-loop", "closed-loop"])
def test_a_stall_counts_for_every_request_due_during_it(rate: float | None, tmp_path: Path) -> None:
    server = StallingServer()
    try:
        figures = openloop.run(f"http://127.0.0.1:{server.port}/", "stall.test", rate=rate, connections=1,
                               duration=2, script_dir=tmp_path)
    finally:
        server.close()
    assert figures["errors"] == 0
    assert server.served > STALL_AT, f"the stall was never reached: {figures}"
    if rate is None:
        # Closed loop: one slow request among thousands; the percentiles do not see the stall.
        assert figures["max_ms"] >= STALL_S * 1000 * 0.9
        assert figures["p99_ms"] < 50, figures
    else:
        # ~150 requests in 2 s at 100/s; the ~50 due during the stall left late and count
        # from their due times (500, 490, ... 10 ms): p90 is well into the stall.
        assert 130 <= figures["requests"] <= 210, figures
        assert figures["late"] >= 30, figures
        assert figures["p90_ms"] > 100, figures
        assert figures["p50_ms"] < 50, figures
