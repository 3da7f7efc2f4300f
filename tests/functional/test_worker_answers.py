"""What the worker class answers itself, through the real gunicorn process.

Every response must name ``server.serverHeader``, not gunicorn.
"""

from __future__ import annotations

import requests

TIMEOUT = 5


# ------------------------------------------------------------------- Server header


def test_server_header_names_the_proxy_everywhere(make_proxy, rdb, backends, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    proxy = make_proxy(server_serverHeader="edge/1.0")
    proxied = requests.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=TIMEOUT)
    unknown = requests.get(f"{proxy.url}/", headers={"Host": "unknown.test"}, timeout=TIMEOUT)
    ping = requests.get(f"{proxy.url}/", headers={"Host": "__ping__"}, timeout=TIMEOUT)
    assert (proxied.status_code, unknown.status_code, ping.status_code) == (200, 400, 200)
    for headers in (proxied.headers, unknown.headers, ping.headers):
        assert headers["server"] == "edge/1.0"
    assert len(proxied.raw.headers.getlist("Server")) == 1


def test_default_server_header_is_cjs_proxy(proxy):
    response = requests.get(f"{proxy.url}/", headers={"Host": "__ping__"}, timeout=TIMEOUT)
    assert response.headers["Server"] == "cjs-proxy"
