"""Certificates from Redis: ``tls:<servername>`` hashes served by SNI without a reload.

Every test runs one real proxy worker (so "the worker's cache" is one cache) against a
real redis-server, with Python ``ssl`` clients sending SNI.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import trustme
from cryptography import x509

from tests.harness import ROOT, RedisServer, free_port, wait_for

#: The issue's bound: a replaced or deleted certificate stops being served within 2 s.
WITHIN = 2.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture()
def default_files(ca, tmp_path):
    """The default certificate (default.test) and a configured one (a.test), as files."""
    paths = {}
    for name in ("default.test", "a.test"):
        issued = ca.issue_cert(name)
        paths[name] = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
        issued.cert_chain_pems[0].write_to_path(str(paths[name][0]))
        issued.private_key_pem.write_to_path(str(paths[name][1]))
    return paths


def start_tls_proxy(make_proxy, files, redis_url=None, **overrides):
    port = free_port()
    https = {"bind": [{"address": "127.0.0.1", "port": port}],
             "cert": str(files["default.test"][0]), "key": str(files["default.test"][1]),
             "certificates": [{"cert": str(files["a.test"][0]), "key": str(files["a.test"][1])}]}
    kwargs = {"redis_url": redis_url} if redis_url else {}
    proxy = make_proxy(https=https, **kwargs, **overrides)
    proxy.tls_port = port
    return proxy


@pytest.fixture()
def tls_proxy(make_proxy, default_files, rdb):
    # Counted from before the start: the session's shared proxy may have feeds open already.
    others = tracking_clients(rdb)
    proxy = start_tls_proxy(make_proxy, default_files)
    wait_for(lambda: tracking_clients(rdb) > others, "the worker's tls: invalidation feed")
    return proxy


def tracking_clients(client: redis.Redis) -> int:
    """Connections with client-side tracking on (``t`` flag): one per open feed per worker
    (the route cache opens its own on the first routed request, none here)."""
    return sum("t" in c["flags"] for c in client.client_list())


def put_cert(client: redis.Redis, name: str, issued: trustme.LeafCert) -> None:
    client.hset(f"tls:{name}", mapping={"certificate": issued.cert_chain_pems[0].bytes().decode(),
                                        "key": issued.private_key_pem.bytes().decode()})


def served(port: int, server_name: str | None) -> x509.Certificate:
    """The certificate the proxy presents for ``server_name``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def cert_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def names(port: int, server_name: str | None) -> list[str]:
    """The DNS names of the certificate the proxy presents for ``server_name``."""
    return cert_names(served(port, server_name))


#: HMGETs per lookup: the exact name and its wildcard, pipelined in one round trip.
PER_LOOKUP = 2


def hmget_calls(client: redis.Redis) -> int:
    """HMGETs Redis has answered: certificate lookups (the proxy's route lookups are EVALSHA)."""
    return int(client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


def served_within(port: int, server_name: str, expected_serial: int | None, bound: float = WITHIN) -> float:
    """Seconds until ``server_name`` is answered with the certificate ``expected_serial``
    (None: the default one); fails past ``bound``."""
    started = time.monotonic()
    while True:
        cert = served(port, server_name)
        if expected_serial is None:
            done = cert_names(cert) == ["default.test"]
        else:
            done = cert.serial_number == expected_serial
        if done:
            return time.monotonic() - started
        assert time.monotonic() - started < bound, f"{server_name}: still the old certificate after {bound} s"
        time.sleep(0.05)


def serial(issued: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number


def test_a_certificate_written_to_redis_serves_the_next_handshake(tls_proxy, ca, rdb):
    assert names(tls_proxy.tls_port, "c.test") == ["default.test"]  # and "no certificate" is now cached
    put_cert(rdb, "c.test", ca.issue_cert("c.test"))
    assert names(tls_proxy.tls_port, "c.test") == ["c.test"]
    assert names(tls_proxy.tls_port, "other.test") == ["default.test"]
    assert names(tls_proxy.tls_port, None) == ["default.test"]


def test_replaced_and_removed_certificates_stop_being_served_within_2s(tls_proxy, ca, rdb):
    first, second = ca.issue_cert("r.test"), ca.issue_cert("r.test")
    put_cert(rdb, "r.test", first)
    assert served(tls_proxy.tls_port, "r.test").serial_number == serial(first)
    put_cert(rdb, "r.test", second)
    served_within(tls_proxy.tls_port, "r.test", serial(second))
    rdb.delete("tls:r.test")
    served_within(tls_proxy.tls_port, "r.test", None)


def test_wildcards_exact_names_and_configured_certificates(tls_proxy, ca, rdb):
    put_cert(rdb, "*.w.test", ca.issue_cert("*.w.test"))
    put_cert(rdb, "e.w.test", ca.issue_cert("e.w.test"))
    put_cert(rdb, "a.test", ca.issue_cert("a.test", "redis-a.test"))
    assert names(tls_proxy.tls_port, "x.w.test") == ["*.w.test"]
    assert names(tls_proxy.tls_port, "Y.W.test.") == ["*.w.test"]  # SNI names are matched as hosts
    assert names(tls_proxy.tls_port, "e.w.test") == ["e.w.test"]  # the exact name beats the wildcard
    assert names(tls_proxy.tls_port, "deep.x.w.test") == ["default.test"]  # one label only
    assert names(tls_proxy.tls_port, "w.test") == ["default.test"]
    assert names(tls_proxy.tls_port, "a.test") == ["a.test"]  # https.certificates come first


def test_a_malformed_pem_gets_the_default_certificate_and_one_log_line(tls_proxy, ca, rdb):
    good = ca.issue_cert("bad.test")
    rdb.hset("tls:bad.test", mapping={"certificate": "-----BEGIN CERTIFICATE-----\nnot base64\n",
                                      "key": good.private_key_pem.bytes().decode()})
    for _ in range(5):
        assert names(tls_proxy.tls_port, "bad.test") == ["default.test"]
    rdb.hset("tls:half.test", "certificate", good.cert_chain_pems[0].bytes().decode())  # no key
    assert names(tls_proxy.tls_port, "half.test") == ["default.test"]
    wait_for(lambda: "tls:half.test" in tls_proxy.log(), "a log line naming tls:half.test")
    lines = [line for line in tls_proxy.log().splitlines() if "tls:bad.test" in line]
    assert len(lines) == 1, lines
    assert "not a usable certificate" in lines[0]
    put_cert(rdb, "bad.test", good)  # mended: served on the next handshake
    assert names(tls_proxy.tls_port, "bad.test") == ["bad.test"]


def test_a_flood_of_unknown_names_is_not_a_flood_of_redis_calls(tls_proxy, rdb):
    unknown = [f"nobody-{i}.test" for i in range(10)]
    before = hmget_calls(rdb)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: names(tls_proxy.tls_port, n), unknown * 10))
    elapsed = time.monotonic() - started
    assert all(a == ["default.test"] for a in answers)
    calls = hmget_calls(rdb) - before
    # One lookup per name, and one more per name if the worker's certificate feed began
    # tracking during the flood (answers read before may have missed a change: forgotten),
    # or if the flood outlasted the negative cache. Without the cache: 100 lookups.
    assert calls <= PER_LOOKUP * len(unknown) * (2 + int(elapsed // 5)), (calls, elapsed)


def slow_redis(client: redis.Redis, seconds: float) -> threading.Thread:
    """Redis busy for ``seconds`` (``DEBUG SLEEP``): every lookup waits that long."""
    thread = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", seconds), daemon=True)
    thread.start()
    time.sleep(0.1)  # the command is in
    return thread


def test_a_slow_lookup_stalls_neither_the_worker_nor_redis(tls_proxy, redis_server, rdb):
    """While Redis takes 2 s to answer one name's lookup, the worker's other handshakes
    complete, and 10 handshakes for that name share one lookup."""
    before = hmget_calls(rdb)
    sleeper = slow_redis(redis_server.client(), 2.0)
    with ThreadPoolExecutor(10) as pool:
        waiting = [pool.submit(names, tls_proxy.tls_port, "slow.test") for _ in range(10)]
        time.sleep(0.2)
        started = time.monotonic()
        assert names(tls_proxy.tls_port, "a.test") == ["a.test"]
        assert names(tls_proxy.tls_port, None) == ["default.test"]
        others = time.monotonic() - started
        assert not any(f.done() for f in waiting), "the slow lookup was not slow"
        assert all(f.result(timeout=20) == ["default.test"] for f in waiting)
    sleeper.join(10)
    assert others < 1.0, f"other handshakes waited {others:.2f} s for the slow lookup"
    assert hmget_calls(rdb) - before == PER_LOOKUP


def test_redis_unreachable_serves_cached_or_default_certificates(make_proxy, default_files, ca, tmp_path):
    own = RedisServer(tmp_path / "own-redis")
    try:
        client = own.client()
        proxy = start_tls_proxy(make_proxy, default_files, redis_url=own.url)
        wait_for(lambda: tracking_clients(client) >= 1, "the worker's tls: invalidation feed")
        put_cert(client, "k.test", ca.issue_cert("k.test"))
        assert names(proxy.tls_port, "k.test") == ["k.test"]
        workers = proxy.worker_pids()
        own.stop()
        deadline = time.monotonic() + 3  # past UNTRACKED_TTL and RETRY_AFTER_ERROR
        while time.monotonic() < deadline:
            assert names(proxy.tls_port, "k.test") == ["k.test"]  # the one read before
            assert names(proxy.tls_port, "never-seen.test") == ["default.test"]
            time.sleep(0.1)
        assert proxy.worker_pids() == workers
        assert proxy.log().count("certificates from redis: redis unreachable") == 1
    finally:
        own.stop()


def test_cert_set_under_the_driver_prefix_is_served(make_proxy, default_files, ca, redis_server, rdb, tmp_path):
    """``cjs-proxy cert set`` and the proxy agree on the key, ``#prefix`` included."""
    proxy = start_tls_proxy(make_proxy, default_files, redis_url=f"{redis_server.url}#p1:")
    wait_for(lambda: tracking_clients(rdb) >= 1, "the worker's tls: invalidation feed")
    issued = ca.issue_cert("cli.test")
    cert, key = tmp_path / "cli.crt", tmp_path / "cli.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    put_cert(rdb, "cli.test", ca.issue_cert("cli.test", "unprefixed.test"))  # another tenant's key
    assert names(proxy.tls_port, "cli.test") == ["default.test"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CJS_PROXY_", "SETTINGS_FLAVOR"))}
    added = subprocess.run([sys.executable, "-m", "cjs_proxy.admin.cli", "--config", str(proxy.config_path),
                            "cert", "set", "cli.test", str(cert), str(key)],
                           capture_output=True, text=True, timeout=30, env=environ, cwd=ROOT)
    assert added.returncode == 0, added.stderr
    assert rdb.exists("p1:tls:cli.test")
    assert names(proxy.tls_port, "cli.test") == ["cli.test"]
