"""The worker's response writer sends a head with the first body bytes, and never holds it longer.

Real gunicorn requests (parsed from bytes by gunicorn's parser) and responses, written to
a socket stand-in that records each ``sendall``: what goes on the wire, and in how many sends.
"""

from __future__ import annotations

from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from workers.response import JOIN_LIMIT, HeadWithBody


class Recorder:
    def __init__(self, data: bytes = b"") -> None:
        self.data = [data]
        self.sends: list[bytes] = []

    def recv(self, size: int) -> bytes:
        return self.data.pop(0) if self.data else b""

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def response(method: str = "GET", headers: list[tuple[str, str]] | None = None,
             status: str = "200 OK") -> tuple[HeadWithBody, Recorder]:
    sock = Recorder(f"{method} / HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    request = next(RequestParser(Config(), sock, ("127.0.0.1", 1)))
    resp = HeadWithBody(request, sock, Config())
    resp.start_response(status, headers if headers is not None else [("Content-Length", "5")])
    return resp, sock


def split(wire: bytes) -> tuple[bytes, bytes]:
    head, _, body = wire.partition(b"\r\n\r\n")
    return head, body


def test_a_small_answer_leaves_in_one_send() -> None:
    resp, sock = response()
    resp.write(b"hello")
    resp.close()
    assert len(sock.sends) == 1
    head, body = split(sock.sends[0])
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 5" in head
    assert body == b"hello"


def test_a_large_first_piece_follows_its_head_in_a_send_of_its_own() -> None:
    resp, sock = response(headers=[("Content-Length", str(JOIN_LIMIT + 1))])
    resp.write(b"x" * (JOIN_LIMIT + 1))
    assert split(sock.sends[0])[1] == b"" and sock.sends[1] == b"x" * (JOIN_LIMIT + 1)


def test_a_chunked_answer_is_framed_with_its_head_and_ended_apart() -> None:
    resp, sock = response(headers=[])
    resp.chunked = True  # gunicorn decides it from the request; a streamed answer of unknown length
    resp.write(b"abc")
    resp.write(b"de")
    resp.close()
    assert split(sock.sends[0])[1] == b"3\r\nabc\r\n"
    assert sock.sends[1:] == [b"2\r\nde\r\n", b"0\r\n\r\n"]


def test_a_head_with_no_body_is_sent_by_the_write_that_built_it() -> None:
    resp, sock = response(method="HEAD")
    resp.write(b"hello")  # a HEAD answer has no body: gunicorn drops the bytes
    assert len(sock.sends) == 1 and sock.sends[0].endswith(b"\r\n\r\n")


def test_an_empty_chunked_piece_does_not_hold_the_head_back() -> None:
    """A streamed answer whose first piece is empty: its head must not wait for the next one."""
    resp, sock = response(headers=[])
    resp.chunked = True
    resp.write(b"")
    assert len(sock.sends) == 1 and sock.sends[0].endswith(b"\r\n\r\n")


def test_an_answer_without_writes_sends_its_head_on_close() -> None:
    resp, sock = response(status="204 No Content", headers=[])
    resp.close()
    assert len(sock.sends) == 1 and sock.sends[0].startswith(b"HTTP/1.1 204 No Content\r\n")


def test_no_sendfile_that_would_write_before_the_head() -> None:
    resp, _sock = response()
    assert resp.can_sendfile() is False


def test_every_request_starts_from_its_own_copy_of_the_constant_environ(monkeypatch, capsys) -> None:
    from gunicorn.http import wsgi as gunicorn_wsgi

    from workers import response as module

    for name in ("Response", "base_environ"):  # restored after the test
        monkeypatch.setattr(gunicorn_wsgi, name, getattr(gunicorn_wsgi, name))
    cfg = Config()
    cfg.set("errorlog", "-")
    expected = gunicorn_wsgi.base_environ(cfg)
    module.install(cfg)
    first, second = gunicorn_wsgi.base_environ(cfg), gunicorn_wsgi.base_environ(cfg)
    assert first is not second and gunicorn_wsgi.Response is HeadWithBody
    first["HTTP_X"] = "mutated by a request"
    assert "HTTP_X" not in second and "HTTP_X" not in gunicorn_wsgi.base_environ(cfg)
    assert {k: v for k, v in first.items() if k not in ("wsgi.errors", "HTTP_X")} == \
        {k: v for k, v in expected.items() if k != "wsgi.errors"}
    first["wsgi.errors"].write("to gunicorn's error log\n")
    assert "to gunicorn's error log" in capsys.readouterr().err
