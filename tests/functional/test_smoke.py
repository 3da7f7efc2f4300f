"""The shortest path through every real part: Redis route, backend answer, access log."""

import requests


def test_request_reaches_backend_through_redis_route(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "smoke-app", backends[0].url)
    response = requests.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=5)
    assert response.status_code == 200
    assert response.json()["server"] == "a"
    assert '"smoke-app"' in proxy.access_log.read_text()
