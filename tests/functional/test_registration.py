"""Self-registered backends: `cjs-proxy register`, the Python API, expiry, churn, the CLI and health."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import requests

from cjs_proxy.admin.store import AdminStore
from cjs_proxy.registration import registered
from tests.harness import ANSWER_TIMEOUT, WAIT, Process, RedisServer, wait_for


def get(proxy, host, path="/echo", session=None):
    return (session or requests).get(f"{proxy.url}{path}", headers={"Host": host}, timeout=ANSWER_TIMEOUT)


def served_by(proxy, host, count, session=None):
    """The names of the backends that answered ``count`` requests (each must be a 200)."""
    names = []
    for _ in range(count):
        response = get(proxy, host, session=session)
        assert response.status_code == 200, response.text
        names.append(response.json()["server"])
    return names


def cli(config_path, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "cjs_proxy.admin.cli", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=timeout)


def start_registrar(tmp_path, config_path, host, url, *extra):
    argv = [sys.executable, "-m", "cjs_proxy.admin.cli", "--config", str(config_path), "register", host, url, *extra]
    return Process(argv, tmp_path / f"register-{time.monotonic_ns()}.log")


def test_registered_backend_gets_traffic_at_once_and_leaves_on_sigterm(proxy, backends, rdb, host, tmp_path):
    rdb.rpush(f"frontend:{host}", "app", backends[1].url)
    assert set(served_by(proxy, host, 5)) == {"b"}  # cached before the registration
    registrar = start_registrar(tmp_path, proxy.config_path, host, backends[0].url, "--ttl", "30")
    try:
        wait_for(lambda: rdb.zscore(f"backends:{host}", backends[0].url), "the registration in redis")
        # The very next requests see it (the route cache was told): both backends serve.
        assert "a" in served_by(proxy, host, 20)
        shown = cli(proxy.config_path, "show", host)
        assert shown.returncode == 0
        assert "#0 " + backends[1].url in shown.stdout
        assert f"registered {backends[0].url}  ttl " in shown.stdout
        assert f"{host}  1 static, 1 registered" in cli(proxy.config_path, "list").stdout
    finally:
        assert registrar.stop(signal.SIGTERM) == 0
    assert rdb.zscore(f"backends:{host}", backends[0].url) is None  # removed on the way out
    assert set(served_by(proxy, host, 20)) == {"b"}
    assert "removed" in registrar.log()


def test_a_killed_registrar_lapses_within_its_ttl(proxy, backends, rdb, host, tmp_path):
    """SIGKILL: nothing removes it, yet no request reaches it after ttl + 1 s (the cache included)."""
    rdb.rpush(f"frontend:{host}", "app", backends[1].url)
    ttl = 2
    registrar = start_registrar(tmp_path, proxy.config_path, host, backends[0].url, "--ttl", str(ttl))
    try:
        wait_for(lambda: rdb.zscore(f"backends:{host}", backends[0].url), "the registration in redis")
        assert "a" in served_by(proxy, host, 20)
        # Renewed, not only registered once: still there after more than a ttl.
        time.sleep(ttl + 1)
        assert rdb.zscore(f"backends:{host}", backends[0].url) is not None
        assert "a" in served_by(proxy, host, 20)
    finally:
        registrar.stop(signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(max(0.0, killed + ttl + 1 - time.monotonic()))
    assert set(served_by(proxy, host, 20)) == {"b"}


def test_a_frontend_of_registered_backends_only_takes_its_identifier(proxy, backends, rdb, host, tmp_path):
    registrar = start_registrar(tmp_path, proxy.config_path, host, backends[2].url, "--identifier", "solo-app")
    try:
        wait_for(lambda: rdb.zscore(f"backends:{host}", backends[2].url), "the registration in redis")
        assert set(served_by(proxy, host, 3)) == {"c"}
        shown = cli(proxy.config_path, "show", host).stdout
        assert "identifier: solo-app" in shown and "static" not in shown
        response = requests.get(f"{proxy.url}/echo", headers={"Host": host, "X-Debug": "1"}, timeout=ANSWER_TIMEOUT)
        assert response.headers["x-debug-vhost"] == "solo-app"
    finally:
        registrar.stop(signal.SIGINT)
    assert get(proxy, host).status_code in (400, 404, 502)  # nothing serves it any more


def test_register_exits_non_zero_when_redis_is_unreachable(tmp_path, backends):
    config = tmp_path / "config.yaml"
    config.write_text("driver: redis://127.0.0.1:1/0\n")
    result = cli(config, "register", "app.test", backends[0].url)
    assert result.returncode == 1
    assert "redis unreachable" in result.stderr and backends[0].url in result.stderr


def test_register_refuses_a_malformed_url(proxy):
    result = cli(proxy.config_path, "register", "app.test", "ftp://nowhere")
    assert result.returncode == 2 and "backend URL" in result.stderr


def test_the_python_api_registers_for_the_block(proxy, backends, rdb, host, redis_server):
    with registered(host, backends[0].url, ttl=3, redis_url=redis_server.url):
        assert set(served_by(proxy, host, 3)) == {"a"}
        time.sleep(4)  # past one ttl: the background thread renewed it
        assert set(served_by(proxy, host, 3)) == {"a"}
    assert rdb.zcard(f"backends:{host}") == 0


def test_churn_of_a_thousand_registrations_fails_no_request(proxy, backends, rdb, redis_server):
    """10 hosts, each always served, while 1,000 registrations come, lapse and go."""
    hosts = [f"churn-{i}.test" for i in range(10)]
    store = AdminStore.from_urls(redis_server.url, redis_server.url, 5, max_connections=2)
    for i, host in enumerate(hosts):
        store.register(host, backends[i % 3].url, ttl=300)  # the one that stays
    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def client(offset: int) -> None:
        with requests.Session() as session:
            for n in range(3000):
                if stop.is_set():
                    return
                response = get(proxy, hosts[(n + offset) % len(hosts)], session=session)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                served[0] += 1

    clients = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + WAIT
    try:
        for n in range(1000):
            assert time.monotonic() < deadline, "churn too slow"
            host, url = hosts[n % len(hosts)], f"{backends[n % 3].url}/r{n}"  # a path: a distinct member
            store.register(host, url, ttl=1 if n % 4 == 0 else 30)  # every 4th lapses by itself
            if n >= 10 and n % 4 != 1:
                store.deregister(hosts[(n - 10) % len(hosts)], f"{backends[(n - 10) % 3].url}/r{n - 10}")
    finally:
        stop.set()
        for thread in clients:
            thread.join(WAIT)
        store.close()
    assert served[0] > 100, "too little traffic during the churn to prove anything"
    assert failures == []


def test_the_active_checker_marks_registered_backends_by_url(proxy, pair, backends, rdb, host, tmp_path):
    rdb.rpush(f"frontend:{host}", "app", backends[1].url)
    store = AdminStore.from_urls(proxy.config["driver"], proxy.config["driver"], 5, max_connections=2)
    try:
        store.register(host, pair[0].url, ttl=60)
        store.register(host, pair[1].url, ttl=60)
        pair[0].stop()
        result = cli(proxy.config_path, "health-check", "--rounds", "1")
        assert result.returncode == 0, result.stderr
        assert rdb.smembers(f"deadurls:{host}") == {pair[0].url}
        assert rdb.smembers(f"dead:{host}") == set()  # static ids untouched
        names = served_by(proxy, host, 30)
        assert "left" not in names and {"b", "right"} <= set(names)
        assert "(dead)" in cli(proxy.config_path, "show", host).stdout
    finally:
        rdb.delete("hchecker_ping")
        store.close()


def test_passive_marks_take_a_dead_registered_backend_out(proxy, pair, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", backends[1].url)
    store = AdminStore.from_urls(proxy.config["driver"], proxy.config["driver"], 5, max_connections=2)
    try:
        store.register(host, pair[0].url, ttl=60)
        pair[0].stop()
        names = served_by(proxy, host, 20)  # retried on the static one: no request fails
        assert set(names) == {"b"}
        assert rdb.smembers(f"deadurls:{host}") == {pair[0].url}
        assert rdb.smembers(f"dead:{host}") == set()  # Hipache's ids never name it
    finally:
        store.close()


def test_the_registrar_keeps_retrying_while_redis_is_away(tmp_path, backends):
    own = RedisServer(tmp_path / "own-redis")
    config = tmp_path / "config.yaml"
    config.write_text(f"driver: {own.url}\n")
    registrar = start_registrar(tmp_path, config, "away.test", backends[0].url, "--ttl", "3")
    try:
        wait_for(lambda: own.client().zscore("backends:away.test", backends[0].url), "the registration")
        own.stop()
        wait_for(lambda: "cannot renew" in registrar.log(), "a logged failure")
        assert registrar.alive()
        own = RedisServer(tmp_path / "own-redis", port=own.port)  # empty: the registration was lost
        wait_for(lambda: own.client().zscore("backends:away.test", backends[0].url), "registered again")
        wait_for(lambda: "again" in registrar.log(), "the recovery logged")
    finally:
        assert registrar.stop(signal.SIGTERM) == 0
        own.stop()


def test_registration_keys_lapse_but_a_short_ttl_never_cuts_a_longer_one(rdb, redis_server, backends, host):
    store = AdminStore.from_urls(redis_server.url, redis_server.url, 5, max_connections=2)
    try:
        store.register(host, backends[0].url, ttl=60, weight=3, identifier="app")
        store.register(host, backends[1].url, ttl=2)
        assert rdb.pttl(f"backends:{host}") > 50_000
        assert rdb.pttl(f"identifier:{host}") > 50_000
        assert rdb.hget(f"weights:{host}", backends[0].url) == "3"
        assert [url for url, _ in store.registrations(host)] == [backends[1].url, backends[0].url]
        assert store.deregister(host, backends[0].url, owns_weight=True)
        assert rdb.hget(f"weights:{host}", backends[0].url) is None
    finally:
        store.close()
