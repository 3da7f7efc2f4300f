"""Backend health: dead marks shared through Redis, retries, panic mode, malformed routes, active checks."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.harness import ANSWER_TIMEOUT, Backend, Proxy, free_port, wait_for


@pytest.fixture(scope="module")
def one_worker_proxy(workdir, redis_server):
    """A proxy with one worker, so a rate-limited log line appears exactly once."""
    started = Proxy(workdir / "proxy-health-one-worker", redis_server.url)
    yield started
    started.stop()


def wait_for_log(proxy, text):
    """The proxy's log lines holding ``text``, once there is at least one (polled)."""
    return wait_for(lambda: [line for line in proxy.log().splitlines() if text in line], f"a log line with {text}")


def get(proxy, host, path="/echo", **kwargs):
    return requests.get(f"{proxy.url}{path}", headers={"Host": host, **kwargs.pop("headers", {})},
                        timeout=ANSWER_TIMEOUT, **kwargs)


def run_health_check(config_path, rounds=1):
    return subprocess.run([sys.executable, "-m", "cjs_proxy.admin.cli", "--config", str(config_path),
                           "health-check", "--rounds", str(rounds)],
                          capture_output=True, text=True, timeout=60, check=True)


def test_killed_backend_costs_no_request_and_is_marked_dead(proxy, pair, rdb, host):
    pubsub = rdb.pubsub()
    pubsub.subscribe("dead")
    rdb.rpush(f"frontend:{host}", "app", pair[0].url, pair[1].url)
    failures: list[str] = []
    served = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            for _ in range(400):
                if stop.is_set():
                    return
                try:
                    response = session.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=ANSWER_TIMEOUT)
                    served.append(response.json()["server"])
                    if response.status_code != 200:
                        failures.append(str(response.status_code))
                except requests.RequestException as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: "left" in served, "an answer from the backend about to be killed")
    pair[0].stop()
    after_kill = len(served)
    wait_for(lambda: len(served) >= after_kill + 40, "40 answers after the kill")
    stop.set()
    for thread in threads:
        thread.join(30)

    assert failures == []
    assert "left" in served and served[-20:] == ["right"] * 20
    assert rdb.smembers(f"dead:{host}") == {"0"}
    assert 0 < rdb.ttl(f"dead:{host}") <= 30
    messages = [m["data"] for m in iter(lambda: pubsub.get_message(timeout=1), None) if m["type"] == "message"]
    assert f"{host};{pair[0].url};0;2" in messages


def test_dead_mark_is_shared_with_another_proxy(proxy, make_proxy, pair, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", pair[0].url, pair[1].url)
    pair[0].stop()
    for _ in range(10):  # until the first proxy has met the dead backend and marked it
        assert get(proxy, host).status_code == 200
        if rdb.sismember(f"dead:{host}", 0):
            break
    assert rdb.sismember(f"dead:{host}", 0)
    assert f"{host}: retrying on another backend" in proxy.log()  # the first proxy did retry

    second = make_proxy()
    for _ in range(20):
        response = get(second, host, headers={"X-Debug": "1"})
        assert response.status_code == 200
        assert response.headers["x-debug-backend-id"] == "1"
    assert "retrying" not in second.log()  # it never even tried the dead backend


def test_only_backend_down_answers_502_at_once_and_is_never_marked(proxy, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    response = get(proxy, host)
    elapsed = time.monotonic() - started
    assert response.status_code == 502
    assert "<title>Application unavailable</title>" in response.text
    assert elapsed < 3.0  # a refused connection is not waited on (tcpTimeout is 5 s here)
    assert not rdb.exists(f"dead:{host}")


@pytest.mark.parametrize(("path", "marked"), [
    ("/status/502", True),
    ("/status/500", True),  # server.deadBackendOn500 defaults to true
    ("/status/503", True),
    ("/status/503?retry_after=30", False),  # maintenance, not death
    ("/status/404", False),
    ("/status/501", False),  # about the request (a method the app lacks), not the backend
    ("/status/505", False),
    ("/status/504", True),
])
def test_backend_answers_that_mark_dead(proxy, backends, rdb, host, path, marked):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url, backends[1].url)
    rdb.sadd(f"dead:{host}", 1)  # so the request surely goes to backend 0
    response = get(proxy, host, path)
    assert response.status_code == int(path.split("/")[2][:3])  # relayed as is
    assert bool(rdb.sismember(f"dead:{host}", 0)) is marked


def test_unknown_method_answered_501_marks_nothing(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url, backends[1].url)
    for _ in range(6):  # Hipache marked one backend dead per request: two took the app down
        response = requests.request("FOO", f"{proxy.url}/", headers={"Host": host}, timeout=ANSWER_TIMEOUT)
        assert response.status_code == 501  # the backend's own answer, relayed
    assert not rdb.exists(f"dead:{host}")
    assert get(proxy, host).status_code == 200


def test_dead_after_counts_failures_in_a_row(make_proxy, backends, rdb, host):
    proxy = make_proxy(server_deadBackendAfter=3)  # one worker: one streak to follow
    rdb.rpush(f"frontend:{host}", "app", backends[0].url, backends[1].url)
    rdb.sadd(f"dead:{host}", 1)  # so every request goes to backend 0

    def fail_twice() -> None:
        for _ in range(2):
            assert get(proxy, host, "/status/502").status_code == 502
        assert not rdb.sismember(f"dead:{host}", 0)

    fail_twice()
    assert get(proxy, host, "/status/404").status_code == 404  # an answer: the streak ends
    fail_twice()
    assert get(proxy, host, "/status/502").status_code == 502  # the third in a row
    assert rdb.sismember(f"dead:{host}", 0)


def test_every_backend_marked_dead_still_serves_panic_mode(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url, backends[1].url)
    rdb.sadd(f"dead:{host}", 0, 1)
    for _ in range(5):
        assert get(proxy, host).status_code == 200


def test_post_with_body_is_retried_when_the_connection_was_refused(proxy, backends, rdb, host):
    dead_url = f"http://127.0.0.1:{free_port()}"
    rdb.rpush(f"frontend:{host}", "app", dead_url, backends[0].url)
    for _ in range(6):  # random choice: some of these meet the refused backend first
        response = requests.post(f"{proxy.url}/echo", data=b"x" * 100_000, headers={"Host": host},
                                 timeout=ANSWER_TIMEOUT)
        assert response.status_code == 200
        assert response.json()["body_length"] == 100_000


def test_fresh_external_checker_means_publish_only(proxy, backends, rdb, host):
    rdb.set("hchecker_ping", int(time.time()))
    pubsub = rdb.pubsub()
    pubsub.subscribe("dead")
    rdb.rpush(f"frontend:{host}", "app", backends[0].url, backends[1].url)
    rdb.sadd(f"dead:{host}", 1)
    assert get(proxy, host, "/status/502").status_code == 502
    assert rdb.smembers(f"dead:{host}") == {"1"}  # not written by the proxy
    messages = [m["data"] for m in iter(lambda: pubsub.get_message(timeout=1), None) if m["type"] == "message"]
    assert f"{host};{backends[0].url};0;2" in messages


def test_health_check_marks_down_backends_and_recovers_them(proxy, pair, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", pair[0].url, pair[1].url)
    port = pair[0].port
    pair[0].stop()
    run_health_check(proxy.config_path)
    assert rdb.smembers(f"dead:{host}") == {"0"}
    assert rdb.ttl(f"dead:{host}") > 0
    assert abs(int(rdb.get("hchecker_ping")) - time.time()) < 10
    for _ in range(10):  # the proxy follows the checker's marks
        assert get(proxy, host).json()["server"] == "right"

    pair[0] = Backend(pair[0].log_path.parent, "left", port=port)
    run_health_check(proxy.config_path)
    assert not rdb.exists(f"dead:{host}")
    seen = {get(proxy, host).json()["server"] for _ in range(30)}
    assert seen == {"left", "right"}


# ------------------------------------------------------------------ bad data in Redis

MALFORMED = [
    "http://127.0.0.1:notaport/",
    "ftp://x",
    "http://",
    "garbage",
    "http://127.0.0.1:9/\r\nX-Injected: 1",
    "http://127.0.0.1 :9",
    "http://127.0.0.1:99999",
]


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_backend_url_is_a_logged_502_not_a_500(one_worker_proxy, rdb, host, url):
    rdb.rpush(f"frontend:{host}", "app", url)
    for _ in range(3):
        response = get(one_worker_proxy, host, headers={"X-Debug": "1"})
        assert response.status_code == 502
        assert "<title>Application unavailable</title>" in response.text
    lines = wait_for_log(one_worker_proxy, f"frontend:{host}")
    assert len(lines) == 1, lines  # one line, rate-limited, not one per request
    assert "malformed backend URL" in lines[0]
    assert not [line for line in one_worker_proxy.log().splitlines() if line.startswith("X-Injected")]
    assert "Traceback" not in one_worker_proxy.log()


def test_malformed_url_beside_a_good_one_still_serves(one_worker_proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", "http://127.0.0.1:notaport/", backends[0].url, "ftp://x")
    for _ in range(10):
        response = get(one_worker_proxy, host, headers={"X-Debug": "1"})
        assert response.status_code == 200
        assert response.headers["x-debug-backend-id"] == "1"
    lines = wait_for_log(one_worker_proxy, f"frontend:{host}")
    assert len(lines) == 1, lines
    assert "#0 " in lines[0] and "#2 " in lines[0] and "serving from the others" in lines[0]
    assert not rdb.exists(f"dead:{host}")


def test_identifier_with_control_characters_is_escaped(one_worker_proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app\r\nX-Injected: 1\x07", backends[0].url)
    response = get(one_worker_proxy, host, headers={"X-Debug": "1"})
    assert response.status_code == 200
    assert response.headers["x-debug-vhost"] == "app\\x0D\\x0AX-Injected: 1\\x07"
    assert "x-injected" not in response.headers
    lines = wait_for(lambda: [line for line in one_worker_proxy.access_log.read_text().splitlines()
                              if "X-Injected" in line], "the access log line")
    assert len(lines) == 1 and lines[0].startswith("127.0.0.1 ")  # escaped, not a line of its own
    assert '"app\\x0D\\x0AX-Injected: 1\\x07"' in lines[0]
