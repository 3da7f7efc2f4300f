"""A real WebSocket backend for the tests (gevent-websocket), run as its own process.

``python tests/ws_backend.py PORT`` serves on 127.0.0.1:PORT until killed:
``/echo`` echoes every message (text or binary), ``/hello`` sends a greeting right after
the handshake, ``/close-first`` closes after the first message, ``/headers`` sends the
upgrade request's headers as JSON, ``/refuse`` answers 403 without upgrading.
"""

from __future__ import annotations

import json
import sys

from gevent import monkey

monkey.patch_all()

from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402


def app(environ, start_response):
    ws = environ.get("wsgi.websocket")
    path = environ.get("PATH_INFO", "/")
    if ws is None:
        body = b"not a websocket\n" if path != "/refuse" else b"upgrade refused\n"
        status = "403 Forbidden" if path == "/refuse" else "200 OK"
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/headers":
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        ws.send(json.dumps(headers))
    if path == "/hello":
        ws.send("hello")
    if path == "/whoami":  # which backend the tunnel reached (balancing tests)
        ws.send(sys.argv[1])
    while True:
        message = ws.receive()
        if message is None:
            break
        ws.send(message, binary=isinstance(message, (bytes, bytearray)))
        if path == "/close-first":
            ws.close()
            break
    return []


def main() -> None:
    server = WSGIServer(("127.0.0.1", int(sys.argv[1])), app, handler_class=WebSocketHandler, log=None)
    server.serve_forever()


if __name__ == "__main__":
    main()
