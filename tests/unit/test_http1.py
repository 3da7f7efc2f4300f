"""The strict HTTP/1.1 reader: exact backend bytes in, a verdict (or a refusal) out.

Each case writes a backend's bytes into one end of a socket pair and reads the other
end with ``ResponseReader``, as the proxy does; no process needed.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from cjs_proxy.exceptions import BackendClosed, BackendProtocolError, BackendTimeout
from cjs_proxy.pipeline.http1 import ResponseHead, ResponseReader, UpstreamBroken, encode_request_head

URL = "http://backend.test"


@pytest.fixture()
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(2)
    with ours, theirs:
        yield ours, theirs


def read(pair: tuple[socket.socket, socket.socket], data: bytes, method: str = "GET", close: bool = False,
         upgrade: str | None = None) -> tuple[ResponseReader, ResponseHead, bytes]:
    ours, theirs = pair
    theirs.sendall(data)
    if close:
        theirs.shutdown(socket.SHUT_WR)
    reader = ResponseReader(ours, URL)
    head = reader.read_head(method, upgrade)
    return reader, head, b"".join(reader.iter_body())


def names(head: ResponseHead) -> list[str]:
    return [name.lower() for name, _ in head.headers]


def test_plain_response_is_reusable(pair) -> None:
    reader, head, body = read(pair, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
    assert (head.status, head.reason, body) == (200, "OK", b"hello")
    assert ("Content-Length", "5") in head.headers and ("X-A", "b") in head.headers
    assert reader.complete and reader.reusable


def test_informational_answers_are_never_the_final_one(pair) -> None:
    seen: list[int] = []
    ours, theirs = pair
    theirs.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
                   b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                   b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: s=1\r\n\r\nok")
    reader = ResponseReader(ours, URL)
    head = reader.read_head("GET", None, lambda h: seen.append(h.status))
    assert seen == [100, 102, 103]
    assert head.status == 200 and b"".join(reader.iter_body()) == b"ok"
    assert reader.reusable


def test_chunked_wins_over_content_length_and_the_connection_is_not_reused(pair) -> None:
    reader, head, body = read(pair, b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    b"5\r\nhello\r\n0\r\n\r\n")
    assert body == b"hello"
    assert "content-length" not in names(head) and "transfer-encoding" not in names(head)
    assert reader.complete and not reader.reusable


@pytest.mark.parametrize("lengths", [b"Content-Length: 5, 5\r\n", b"Content-Length: 5\r\nContent-Length: 5\r\n"])
def test_identical_content_lengths_are_one(pair, lengths: bytes) -> None:
    _reader, head, body = read(pair, b"HTTP/1.1 200 OK\r\n" + lengths + b"\r\nhello")
    assert body == b"hello" and head.content_length == 5
    assert [v for n, v in head.headers if n.lower() == "content-length"] == ["5"]


@pytest.mark.parametrize("lengths", [b"Content-Length: 5, 6\r\n", b"Content-Length: 5\r\nContent-Length: 6\r\n"])
def test_differing_content_lengths_are_refused(pair, lengths: bytes) -> None:
    with pytest.raises(BackendProtocolError, match="Content-Length"):
        read(pair, b"HTTP/1.1 200 OK\r\n" + lengths + b"\r\nhello")


@pytest.mark.parametrize("bad", [
    b"HTTP/1.1 200 OK\r\nX-Note: a\rSet-Cookie: injected=1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Note: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Note : a\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Note: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"ICE/1.0 200 OK\r\n\r\n",
])
def test_invalid_heads_are_refused(pair, bad: bytes) -> None:
    with pytest.raises(BackendProtocolError):
        read(pair, bad)


def test_bare_lf_is_refused_without_waiting_for_a_timeout(pair) -> None:
    ours, theirs = pair
    theirs.sendall(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n")
    with pytest.raises(BackendProtocolError, match="bare LF"):
        ResponseReader(ours, URL).read_head("GET")


def test_unasked_101_is_refused(pair) -> None:
    with pytest.raises(BackendProtocolError, match="101"):
        read(pair, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")


def test_101_to_another_protocol_than_asked_is_refused(pair) -> None:
    with pytest.raises(BackendProtocolError, match="h2c"):
        read(pair, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
             upgrade="websocket")


def test_websocket_101_keeps_the_first_frame_bytes(pair) -> None:
    ours, theirs = pair
    theirs.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x02hi")
    reader = ResponseReader(ours, URL)
    head = reader.read_head("GET", "websocket")
    assert head.status == 101 and head.raw.endswith(b"\r\n\r\n")
    assert reader.leftover() == b"\x81\x02hi"
    assert not reader.reusable


def test_truncated_body_is_broken(pair) -> None:
    with pytest.raises(UpstreamBroken, match="cut short after 10 bytes"):
        read(pair, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", close=True)


def test_truncated_chunked_body_is_broken(pair) -> None:
    with pytest.raises(UpstreamBroken):
        read(pair, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", close=True)


def test_invalid_chunk_is_broken(pair) -> None:
    with pytest.raises(UpstreamBroken, match="invalid body"):
        read(pair, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")


def test_body_until_close_is_complete_but_never_reused(pair) -> None:
    reader, _head, body = read(pair, b"HTTP/1.1 200 OK\r\n\r\nall of it", close=True)
    assert body == b"all of it" and reader.complete and not reader.reusable


def test_head_response_has_no_body_whatever_its_length(pair) -> None:
    reader, _head, body = read(pair, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", method="HEAD")
    assert body == b"" and reader.complete and reader.reusable


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale",
    b"HTTP/1.1 204 No Content\r\n\r\nextra",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
])
def test_connection_is_not_reused_after_extra_bytes_close_or_http10(pair, data: bytes) -> None:
    reader, _head, body = read(pair, data)
    assert reader.complete and not reader.reusable
    assert b"stale" not in body


def test_closed_before_any_byte_is_distinguished(pair) -> None:
    ours, theirs = pair
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(BackendClosed):
        ResponseReader(ours, URL).read_head("GET")


def test_silence_is_a_timeout(pair) -> None:
    ours, _ = pair
    ours.settimeout(0.05)
    with pytest.raises(BackendTimeout):
        ResponseReader(ours, URL).read_head("GET")


def test_oversized_head_is_refused(pair) -> None:
    ours, theirs = pair
    theirs.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n")
    with pytest.raises(BackendProtocolError, match="larger than"):
        ResponseReader(ours, URL).read_head("GET")


def test_request_head_is_written_exactly() -> None:
    head = encode_request_head("GET", "/p?sig=ab%2bcd%3d&x=|{}", [("Host", "a.test"), ("X-A", "caf\xe9")])
    assert head == b"GET /p?sig=ab%2bcd%3d&x=|{} HTTP/1.1\r\nHost: a.test\r\nX-A: caf\xe9\r\n\r\n"


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\x00b"])
def test_request_head_never_carries_a_line_break_inside_a_field(value: str) -> None:
    with pytest.raises(BackendProtocolError):
        encode_request_head("GET", "/", [("Host", "a.test"), ("X-Id", value)])
