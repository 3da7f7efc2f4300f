"""The backend's answer on its way to the client: status line, streamed body, early hints.

The body is streamed, so a relayed request ends when the server is done with it: PEP
3333 has the server call the body's ``close()`` (after the last chunk, or when the
client went away). ``StreamedBody.close`` is therefore where such a request ends: the
backend connection is settled and the exchange handed to ``end_of_request`` (the
access-log line).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from typing import Any

from cjs_proxy.exceptions import BackendUnavailable
from cjs_proxy.pipeline.error_pages import reason_phrase
from cjs_proxy.pipeline.exchange import Exchange
from cjs_proxy.pipeline.http1 import ResponseHead, UpstreamBroken
from cjs_proxy.pipeline.sockets import Pacer, reset_on_close

log = logging.getLogger("cjs_proxy.pipeline.relay")


class StreamedBody:
    """The backend's body on its way to the client; its ``close`` ends the request.

    If the backend breaks mid-body, the client connection is reset (RST) rather than
    ended cleanly, so no client can take a truncated body for a complete one.
    """

    def __init__(self, exchange: Exchange, chunks: Iterator[bytes], release: Callable[[], None],
                 end_of_request: Callable[[Exchange], None],
                 on_broken: Callable[[Exception], None] = lambda error: None) -> None:
        self.exchange = exchange
        #: Told when the backend breaks mid-body (the upstream errors counter).
        self.on_broken = on_broken
        self.chunks = chunks
        #: Settles the backend connection (back to its pool if the body was read whole).
        self.release = release
        self.end_of_request = end_of_request

    def __iter__(self) -> Iterator[bytes]:
        exchange = self.exchange
        pacer = Pacer()  # the server writes each chunk to the client before asking for the next
        try:
            for chunk in self.chunks:
                exchange.bytes_sent += len(chunk)
                yield chunk
                pacer.moved(len(chunk))
        except (UpstreamBroken, BackendUnavailable) as exc:
            log.warning("resetting client connection: %s", exc)
            self.on_broken(exc)
            reset_client(exchange.environ)
            # An OSError tells gunicorn the connection is gone: it writes nothing more.
            raise ConnectionResetError(errno.ECONNRESET, f"backend broke mid-body: {exc}") from exc

    def close(self) -> None:
        """Called by the server once the response is over (PEP 3333): the request ends here."""
        try:
            self.release()
        finally:
            self.end_of_request(self.exchange)


def status_line(status: int, reason: str) -> str:
    """The backend's status line; its reason phrase only if it is printable, else the standard one."""
    if not reason or not reason.isprintable():
        reason = reason_phrase(status)
    return f"{status} {reason}"


def early_hints_relay(environ: dict[str, Any]) -> Callable[[ResponseHead], None] | None:
    """Relays a backend's ``103 Early Hints`` (its ``Link`` headers) through gunicorn's early hints.

    Other informational answers (100, 102) are the backend's business and are dropped.
    """
    send = environ.get("wsgi.early_hints")
    if send is None:
        return None

    def relay(head: ResponseHead) -> None:
        links = [("Link", value) for name, value in head.headers if name.lower() == "link"]
        if head.status == 103 and links:
            send(links)

    return relay


def reset_client(environ: dict[str, Any]) -> None:
    """Close the client connection with an RST (``SO_LINGER`` 0): a FIN would let a client
    that does not check lengths take a truncated body for a complete one."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return
    try:
        reset_on_close(sock)
    except OSError:
        pass  # already gone: nothing left to reset
    sock.close()
