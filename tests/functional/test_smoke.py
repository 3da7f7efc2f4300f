"""The shortest path through every real part: Redis route, backend answer, access log."""

import requests

from tests.harness import ANSWER_TIMEOUT, wait_for


def test_request_reaches_backend_through_redis_route(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "smoke-app", backends[0].url)
    response = requests.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=ANSWER_TIMEOUT)
    assert response.status_code == 200
    assert response.json()["server"] == "a"
    wait_for(lambda: '"smoke-app"' in proxy.access_log.read_text(), "the access log line")
