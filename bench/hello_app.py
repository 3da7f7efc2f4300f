"""The Python floor: the small body from a gunicorn gevent worker that proxies nothing.

`bench/run.py` serves it with 2 gevent workers, as the proxy runs, in the keep-alive
scenario: the gap between this and cjs-proxy is what the proxy itself costs.
"""

BODY = b"hello, world\n"


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(BODY)))])
    return [BODY]
