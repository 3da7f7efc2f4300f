"""``https.redirectHttp``: a plain-HTTP request answered with the same URL over HTTPS.

Decided before routing: the answer needs only the host and the target, so no Redis
round trip is spent on a request that will come back over TLS anyway.
"""

from __future__ import annotations

from cjs_proxy import config

Headers = list[tuple[str, str]]


def https_redirect_port(settings: config.Settings) -> int | None:
    """The port plain-HTTP requests are sent to, or None when they are served as they are."""
    https = config.https_listeners(settings)
    return https[0]["port"] if https and settings["https.redirectHttp"] else None


def https_redirect(host: str, https_port: int, target: str) -> tuple[str, Headers, bytes]:
    """The ``301`` to the same URL over HTTPS, permanently (status line, headers, body)."""
    port = "" if https_port == 443 else f":{https_port}"
    location = f"https://{host}{port}{target}"
    body = f"Moved to {location}\n".encode()
    headers = [("Location", location), ("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    return "301 Moved Permanently", headers, body
