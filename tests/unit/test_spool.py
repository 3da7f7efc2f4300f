"""Spooling the rest of an answer whose client stopped taking it: bytes, errors and the budget.

A real ``ResponseReader`` on a socket pair: the peer writes a backend's exact bytes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import gevent
import pytest
from gevent import socket as gsocket  # the test runner is not monkeypatched; a worker's sockets are gevent's

from cjs_proxy.pipeline import spool as spool_module
from cjs_proxy.pipeline.http1 import ResponseReader, UpstreamBroken
from cjs_proxy.pipeline.spool import SpoolBudget, SpoolingBody


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    proxy_side, backend_side = gsocket.socketpair()
    proxy_side.settimeout(5)
    yield proxy_side, backend_side
    proxy_side.close()
    backend_side.close()


def answer(backend_side: socket.socket, body_length: int, first: bytes) -> None:
    backend_side.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body_length + first)


def reader_on(proxy_side: socket.socket) -> ResponseReader:
    reader = ResponseReader(proxy_side, "http://backend.test")
    reader.read_head("GET")
    return reader


def test_the_budget_refuses_past_its_limit_and_takes_back():
    budget = SpoolBudget(100)
    assert budget.take(60) and not budget.take(41) and budget.take(40)
    budget.give_back(60)
    assert budget.used == 40


def test_the_rest_comes_from_the_spool_and_the_connection_goes_back_once_it_is_read(pair):
    proxy_side, backend_side = pair
    rest = bytes(range(256)) * 4000  # 1,024,000 bytes: several copies through the buffer
    answer(backend_side, 1000 + len(rest), b"a" * 1000)
    given_back = []
    budget = SpoolBudget()
    body = SpoolingBody(reader_on(proxy_side), budget, lambda: given_back.append(True))
    relay = iter(body)
    first = next(relay)  # the relay waits on its client with this piece
    assert first == b"a" * 1000
    assert body.spool_rest() is True and budget.used == len(rest)
    gevent.spawn(backend_side.sendall, rest)
    assert b"".join(relay) == rest  # waits for the spool to be filled, then reads it back
    assert given_back == [True]
    assert body.reader.complete and body.reader.reusable
    body.close()
    assert budget.used == 0


def test_bytes_after_the_declared_length_stay_out_of_the_answer_and_the_connection_is_not_reused(pair):
    proxy_side, backend_side = pair
    answer(backend_side, 10, b"0123")
    body = SpoolingBody(reader_on(proxy_side), SpoolBudget(), lambda: None)
    relay = iter(body)
    assert next(relay) == b"0123"
    backend_side.sendall(b"456789" + b"HTTP/1.1 200 OK\r\n\r\n")  # a second, unasked-for answer
    gevent.sleep(0.01)
    assert body.spool_rest()
    assert b"".join(relay) == b"456789"
    assert body.reader.complete  # the extra bytes are in the socket: the pool's idle check drops it


def test_a_backend_broken_while_spooled_breaks_the_answer_after_the_bytes_that_came(pair):
    proxy_side, backend_side = pair
    answer(backend_side, 100, b"x" * 10)
    body = SpoolingBody(reader_on(proxy_side), SpoolBudget(), lambda: None)
    relay = iter(body)
    assert next(relay) == b"x" * 10
    assert body.spool_rest()
    backend_side.sendall(b"y" * 10)
    backend_side.shutdown(socket.SHUT_WR)
    assert next(relay) == b"y" * 10
    with pytest.raises(UpstreamBroken, match="cut short after 20 bytes"):
        next(relay)
    assert not body.reader.complete  # so the connection is closed, never pooled


def test_what_cannot_be_bounded_is_not_spooled(pair):
    proxy_side, backend_side = pair
    backend_side.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert not SpoolingBody(reader_on(proxy_side), SpoolBudget(), lambda: None).spool_rest()


@pytest.mark.parametrize("length, limit", [(spool_module.MAX_ANSWER + 1, spool_module.WORKER_BUDGET), (11, 10)])
def test_an_answer_over_the_largest_spool_or_the_budget_is_not_spooled(pair, length, limit):
    proxy_side, backend_side = pair
    answer(backend_side, length, b"z")
    budget = SpoolBudget(limit)
    assert not SpoolingBody(reader_on(proxy_side), budget, lambda: None).spool_rest()
    assert budget.used == 0


def test_a_client_gone_while_its_answer_is_spooled_closes_the_spool_and_the_connection(pair):
    proxy_side, backend_side = pair
    answer(backend_side, 1_000_000, b"p" * 10)
    given_back = []
    budget = SpoolBudget()
    body = SpoolingBody(reader_on(proxy_side), budget, lambda: given_back.append(True))
    relay = iter(body)
    next(relay)
    assert body.spool_rest()
    body.close()  # the client went away
    backend_side.sendall(b"q" * 1000)
    gevent.sleep(0.05)
    assert given_back == [True] and budget.used == 0
    assert not body.reader.complete


def test_a_fill_waiting_its_turn_for_a_client_that_went_away_reads_nothing(pair):
    proxy_side, backend_side = pair
    answer(backend_side, 100, b"r" * 10)
    budget = SpoolBudget(fills=1)
    given_back = []
    body = SpoolingBody(reader_on(proxy_side), budget, lambda: given_back.append(True))
    relay = iter(body)
    next(relay)
    with budget.filling:  # another answer's fill holds the only turn
        assert body.spool_rest()
        body.close()  # the client goes away meanwhile
        proxy_side.close()  # and the connection with it
    gevent.sleep(0.01)
    assert given_back == [True] and budget.used == 0 and body.reader.bytes_read == 10
