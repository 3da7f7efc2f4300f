"""Redis through Sentinel against real processes: master, replica, three sentinels, the real proxy.

The failover test kills the master (SIGKILL) under steady traffic and holds the proxy
to: no failed request for known hosts, dead marks and limiter counters written to the
new master, and a route change written there seen by every worker within 2 s.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import redis
import requests

from cjs_proxy.admin.cli import main as cli_main
from cjs_proxy.lifecycle.sentinel_probe import SentinelProbe
from cjs_proxy.pipeline.sentinel import sentinel_client
from cjs_proxy.pipeline.sentinel_url import parse_sentinel_url
from cjs_proxy.pipeline.store import RouteStore
from tests.harness import free_port, wait_for
from tests.sentinel_cluster import SentinelCluster

#: Seconds the issue allows between a route change on the new master and every worker serving it.
ROUTE_CHANGE_BOUND = 2.0
#: Most seconds of traffic the load loop sends (it stops earlier when told).
LOAD_SECONDS = 120.0


@pytest.fixture()
def cluster(tmp_path):
    started = SentinelCluster(tmp_path / "sentinel")
    yield started
    started.stop()


def served_by(proxy, host: str, session: requests.Session) -> str | int:
    """The backend that answered (its name), or the status when it was not a 200."""
    response = session.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=10)
    return response.json()["server"] if response.status_code == 200 else response.status_code


def warm_every_worker(proxy, hosts, workers: int = 2) -> None:
    """New connections until every worker has served every host: each worker's last good
    routes are its own, and only hosts it served are known to it while Redis is away."""
    wait_for(lambda: len(proxy.worker_pids()) == workers, "all workers up")
    served: set[tuple[str, str]] = set()

    def all_served() -> bool:
        for host in hosts:
            response = requests.get(f"{proxy.url}/echo", timeout=10,
                                    headers={"Host": host, "Connection": "close", "X-Debug": "1"})
            assert response.status_code == 200, response.text
            served.add((response.headers["x-debug-worker"], host))
        return len(served) == workers * len(hosts)

    wait_for(all_served, "every worker served every host")


def every_worker_serves(proxy, host: str, name: str, workers: int = 2) -> bool:
    """New connections until each worker answered once: True when all were served by ``name``."""
    answers: dict[str, str | int] = {}
    for _ in range(50):
        response = requests.get(f"{proxy.url}/echo", timeout=10,
                                headers={"Host": host, "Connection": "close", "X-Debug": "1"})
        answers[response.headers.get("x-debug-worker", "?")] = \
            response.json()["server"] if response.status_code == 200 else response.status_code
        if len(answers) == workers:
            break
    return len(answers) == workers and set(answers.values()) == {name}


class Load(threading.Thread):
    """Steady requests for ``hosts`` through ``proxies`` until stopped (bounded in time and count)."""

    def __init__(self, proxies, hosts) -> None:
        super().__init__(daemon=True)
        self.proxies, self.hosts = proxies, hosts
        self.results: Counter[str | int] = Counter()
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        for i in range(100_000):
            if self.done.is_set() or time.monotonic() > deadline:
                break
            proxy, host = self.proxies[i % len(self.proxies)], self.hosts[(i // 2) % len(self.hosts)]
            try:  # a new connection each time: the requests spread over every worker
                response = requests.get(f"{proxy.url}/echo", timeout=10,
                                        headers={"Host": host, "Connection": "close"})
                self.results[response.status_code] += 1
                if response.status_code != 200:
                    self.failures.append(f"{host} via :{proxy.port}: {response.status_code} {response.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(f"{host} via :{proxy.port}: {exc}")
            time.sleep(0.005)

    def total(self) -> int:
        return sum(self.results.values()) + len(self.failures)

    def stop(self) -> None:
        self.done.set()
        self.join(LOAD_SECONDS)


def test_failover_under_load_loses_no_request_and_writes_go_to_the_new_master(cluster, make_proxy, backends, host):
    master = cluster.master.client()
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: marked dead on first use
    dying = f"dying-{host}"
    master.rpush(f"frontend:{host}", "app", backends[0].url)
    master.rpush(f"frontend:{dying}", "dying", dead_url, backends[1].url)
    wait_for(lambda: cluster.replica.client().exists(f"frontend:{dying}"), "frontends replicated")
    url = cluster.url()
    # One proxy with limits (every lookup goes to Redis, in the limiter's script; a slow rate
    # with a huge burst keeps the counter key alive and never refuses; onError local while
    # there is no master), one without (routes from the cache, kept current by the feed).
    limited = make_proxy(url, server_workers=2, server_deadBackendAfter=1,
                         rateLimit={"enabled": True, "perIp": None, "onError": "local",
                                    "tiers": {"default": {"rate": 50, "burst": 100_000}}})
    cached = make_proxy(url, server_workers=2, server_deadBackendAfter=1)
    with requests.Session() as session:
        for proxy in (limited, cached):
            assert served_by(proxy, host, session) == "a"
            assert served_by(proxy, dying, session) == "b"
        # The dead backend is picked at random: it is marked once a request chose it.
        wait_for(lambda: served_by(cached, dying, session) == "b" and master.sismember(f"dead:{dying}", "0"),
                 "dead mark on the first master")
    for proxy in (limited, cached):
        warm_every_worker(proxy, [host, dying])
    counter = f"rl:tier:default:{host}"
    assert master.exists(counter)

    load = Load([limited, cached], [host, dying])
    load.start()
    try:
        wait_for(lambda: load.total() >= 50, "traffic flowing before the failover")
        cluster.kill_master()
        killed_at = time.monotonic()
        new_master = cluster.wait_promoted().client()
        promoted_in = time.monotonic() - killed_at
        sent_at_promotion = load.total()
        wait_for(lambda: load.total() >= sent_at_promotion + 200, "traffic after the failover")
        # Writes continue on the new master: limiter counters and dead marks.
        before = new_master.get(counter)
        wait_for(lambda: new_master.get(counter) != before, "limiter counter advancing on the new master")
        new_master.delete(f"dead:{dying}")
        wait_for(lambda: new_master.sismember(f"dead:{dying}", "0"), "dead mark written to the new master")
    finally:
        load.stop()
    assert not load.failures, f"{len(load.failures)} failed of {load.total()}: {load.failures[:5]}"
    assert "fail-local" in limited.log()  # while there was no master, the workers decided the limits
    assert load.results[200] > 100

    # The cached proxy's workers reopened their invalidation feed on the new master (tracking
    # clients, flag t), so the check below is the feed's and not a cache left off for good.
    # (A feed reopens when a request asks it: requests are sent meanwhile.)
    def feeds_reopened() -> bool:
        assert every_worker_serves(cached, host, "a")
        return sum("t" in c["flags"] for c in new_master.client_list()) >= 2

    wait_for(feeds_reopened, "invalidation feeds reopened on the new master")
    # A route change on the new master is served by every worker of both proxies within 2 s.
    new_master.lset(f"frontend:{host}", 1, backends[2].url)
    changed_at = time.monotonic()
    for proxy in (limited, cached):
        wait_for(lambda p=proxy: every_worker_serves(p, host, "c"), "route change served after the failover")
    seen_in = time.monotonic() - changed_at
    print(f"promotion after {promoted_in:.1f}s; route change seen in {seen_in:.2f}s; {dict(load.results)}")
    assert seen_in < ROUTE_CHANGE_BOUND


def test_replicas_true_reads_routes_from_the_replica(cluster, make_proxy, backends, host):
    master, replica = cluster.master.client(), cluster.replica.client()
    master.rpush(f"frontend:{host}", "app", backends[0].url)
    wait_for(lambda: replica.exists(f"frontend:{host}"), "frontend replicated")
    proxy = make_proxy(cluster.url("replicas=true"), server_routeCache=False)
    replica.config_resetstat()
    master.config_resetstat()
    with requests.Session() as session:
        assert [served_by(proxy, host, session) for _ in range(20)] == ["a"] * 20
    evalsha = "cmdstat_evalsha"
    assert int(replica.info("commandstats").get(evalsha, {}).get("calls", 0)) >= 20
    assert evalsha not in master.info("commandstats")


def test_replicas_true_cache_hears_of_changes_through_the_replica(cluster, make_proxy, backends, host):
    """The route cache's feed listens on the replica lookups read from: a change written to
    the master is served once replicated, within the 2 s bound."""
    master, replica = cluster.master.client(), cluster.replica.client()
    master.rpush(f"frontend:{host}", "app", backends[0].url)
    wait_for(lambda: replica.exists(f"frontend:{host}"), "frontend replicated")
    proxy = make_proxy(cluster.url("replicas=true"))
    with requests.Session() as session:
        wait_for(lambda: served_by(proxy, host, session) == "a"
                 and sum("t" in c["flags"] for c in replica.client_list()) >= 1, "feed open on the replica")
        assert not any("t" in c["flags"] for c in master.client_list())
        master.lset(f"frontend:{host}", 1, backends[1].url)
        changed_at = time.monotonic()
        wait_for(lambda: served_by(proxy, host, session) == "b", "route change seen through the replica")
    assert time.monotonic() - changed_at < ROUTE_CHANGE_BOUND


def test_replicas_true_writes_dead_marks_to_the_master(cluster, backends, host):
    store = RouteStore.from_urls(cluster.url("replicas=true"), cluster.url("replicas=true"), 2.0, 4)
    try:
        assert store.reader is not store.writer
        store.mark_dead(host, 0, backends[0].url, 2, 30)
        assert cluster.master.client().sismember(f"dead:{host}", "0")
    finally:
        store.close()


def test_cli_works_through_sentinel(cluster, tmp_path, backends, host, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(f"driver: '{cluster.url()}'\n")
    assert cli_main(["--config", str(config), "add", host, "app", backends[0].url]) == 0
    assert cluster.master.client().lrange(f"frontend:{host}", 0, -1) == ["app", backends[0].url]
    assert cli_main(["--config", str(config), "show", host]) == 0
    assert cli_main(["--config", str(config), "list"]) == 0
    assert host in capsys.readouterr().out.split()
    assert cli_main(["check-config", str(config)]) == 0


def test_redis_cli_and_readiness_probe_find_the_master_through_sentinel(cluster, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"driver: '{cluster.url()}'\n")
    result = subprocess.run([sys.executable, "-m", "cjs_proxy.admin.cli", "--config", str(config),
                             "redis-cli", "SET", "written-through", "cli"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert cluster.master.client().get("written-through") == "cli"
    assert SentinelProbe(cluster.url(), 2.0)() is None
    problem = SentinelProbe(cluster.url().replace("/mymaster/", "/nosuch/"), 2.0)()
    assert problem is not None and "knows no master 'nosuch'" in problem


def test_sentinel_pools_are_bounded_and_blocking(cluster):
    """As a redis:// driver's: at most max_connections, a caller waits up to the timeout for one."""
    client = sentinel_client(parse_sentinel_url(cluster.url()), 0.5, max_connections=2)
    pool = client.connection_pool
    held = [pool.get_connection(), pool.get_connection()]
    assert {(c.host, c.port) for c in held} == {("127.0.0.1", cluster.master.port)}
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        pool.get_connection()
    assert time.monotonic() - started >= 0.4  # it waited for one
    pool.release(held[0])
    assert pool.get_connection() is held[0]
    client.close()
