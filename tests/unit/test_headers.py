"""Header rewriting: hop-by-hop removal, X-Forwarded-*, and the client's address."""

from __future__ import annotations

from typing import Any

import pytest

from cjs_proxy.pipeline.headers import (
    client_address,
    downstream_response_headers,
    escape_header_value,
    is_hop_by_hop,
    new_request_id,
    parse_networks,
    upstream_request_headers,
)


def environ(**headers: str) -> dict[str, Any]:
    """A WSGI environ from a TCP peer at 127.0.0.1 with ``HTTP_*`` headers."""
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "127.0.0.1",
                           "SERVER_PORT": "8080", "wsgi.url_scheme": "http"}
    env.update(headers)
    return env


def upstream(env: dict[str, Any], **overrides: Any) -> dict[str, str]:
    kwargs: dict[str, Any] = {"host": env.get("HTTP_HOST", "app.example"), "routed_host": "app.example",
                              "client_ip": "127.0.0.1", "proto": "http", "port": "8080", "request_id": "rid-1",
                              "trusted_peer": False}
    kwargs.update(overrides)
    headers = upstream_request_headers(env, **kwargs)
    assert len({name.lower() for name, _ in headers}) == len(headers), f"a header is sent twice: {headers}"
    return dict(headers)


def lower_names(headers: dict[str, str]) -> set[str]:
    return {name.lower() for name in headers}


# ------------------------------------------------------------------ request side


def test_plain_headers_pass_through() -> None:
    headers = upstream(environ(HTTP_HOST="app.example", HTTP_ACCEPT="text/html",
                               HTTP_X_CUSTOM_THING="yes", HTTP_COOKIE="a=1; b=2"))
    assert headers["Host"] == "app.example"
    assert headers["Accept"] == "text/html"
    assert headers["X-Custom-Thing"] == "yes"
    assert headers["Cookie"] == "a=1; b=2"


def test_host_is_unchanged() -> None:
    headers = upstream(environ(HTTP_HOST="App.Example.COM:8080"))
    assert headers["Host"] == "App.Example.COM:8080"


@pytest.mark.parametrize("key", [
    "HTTP_CONNECTION", "HTTP_KEEP_ALIVE", "HTTP_TE", "HTTP_TRAILER", "HTTP_UPGRADE",
    "HTTP_TRANSFER_ENCODING", "HTTP_PROXY_CONNECTION", "HTTP_PROXY_AUTHORIZATION",
    "HTTP_PROXY_AUTHENTICATE", "HTTP_PROXY_ANYTHING", "HTTP_EXPECT",
])
def test_hop_by_hop_request_headers_are_stripped(key: str) -> None:
    headers = upstream(environ(HTTP_HOST="app.example", **{key: "something"}))
    name = key[5:].replace("_", "-").lower()
    assert name not in lower_names(headers)
    assert headers["Host"] == "app.example"


def test_headers_named_by_connection_are_stripped() -> None:
    headers = upstream(environ(HTTP_CONNECTION="keep-alive, X-Secret,  x-other ",
                               HTTP_X_SECRET="s", HTTP_X_OTHER="o", HTTP_X_KEPT="k"))
    names = lower_names(headers)
    assert "x-secret" not in names
    assert "x-other" not in names
    assert "connection" not in names
    assert headers["X-Kept"] == "k"


def test_expect_100_continue_is_not_forwarded() -> None:
    headers = upstream(environ(HTTP_EXPECT="100-continue", CONTENT_LENGTH="10"))
    assert "expect" not in lower_names(headers)
    assert headers["Content-Length"] == "10"


def test_x_forwarded_for_gets_the_peer_appended() -> None:
    headers = upstream(environ(HTTP_X_FORWARDED_FOR="1.2.3.4"))
    assert headers["X-Forwarded-For"] == "1.2.3.4, 127.0.0.1"


def test_x_forwarded_for_chain_gets_the_peer_appended() -> None:
    headers = upstream(environ(HTTP_X_FORWARDED_FOR="1.2.3.4, 10.0.0.1"))
    assert headers["X-Forwarded-For"] == "1.2.3.4, 10.0.0.1, 127.0.0.1"


def test_x_forwarded_for_is_the_peer_when_absent() -> None:
    headers = upstream(environ())
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert list(lower_names(headers)).count("x-forwarded-for") == 1


def test_proxy_set_headers() -> None:
    headers = upstream(environ(), client_ip="203.0.113.9", proto="https", port="443",
                       request_id="abc123")
    assert headers["X-Real-IP"] == "203.0.113.9"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Port"] == "443"
    assert headers["X-Request-ID"] == "abc123"


def test_client_copies_of_proxy_set_headers_are_replaced() -> None:
    headers = upstream(environ(HTTP_X_REAL_IP="6.6.6.6", HTTP_X_FORWARDED_PROTO="https",
                               HTTP_X_FORWARDED_PORT="1", HTTP_X_REQUEST_ID="forged"),
                       client_ip="127.0.0.1", proto="http", port="8080", request_id="rid-1")
    by_name: dict[str, list[str]] = {}
    for name, value in headers.items():
        by_name.setdefault(name.lower(), []).append(value)
    assert by_name["x-real-ip"] == ["127.0.0.1"]
    assert by_name["x-forwarded-proto"] == ["http"]
    assert by_name["x-forwarded-port"] == ["8080"]
    assert by_name["x-request-id"] == ["rid-1"]


def test_content_type_and_length_come_from_cgi_keys() -> None:
    headers = upstream(environ(CONTENT_TYPE="application/json", CONTENT_LENGTH="42"))
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == "42"


def test_empty_content_type_and_length_are_not_sent() -> None:
    headers = upstream(environ(CONTENT_TYPE="", CONTENT_LENGTH=""))
    assert "content-type" not in lower_names(headers)
    assert "content-length" not in lower_names(headers)


def test_nothing_is_invented() -> None:
    absent = upstream(environ())
    assert not {"user-agent", "accept-encoding", "accept", "connection"} & lower_names(absent)
    sent = upstream(environ(HTTP_USER_AGENT="curl/8", HTTP_ACCEPT_ENCODING="gzip"))
    assert sent["User-Agent"] == "curl/8"
    assert sent["Accept-Encoding"] == "gzip"


def test_non_header_environ_keys_are_ignored() -> None:
    headers = upstream(environ(PATH_INFO="/x", QUERY_STRING="a=1", SERVER_NAME="n"))
    assert not {"path-info", "query-string", "server-name"} & lower_names(headers)


@pytest.mark.parametrize(("name", "tokens", "expected"), [
    ("Connection", set(), True),
    ("keep-alive", set(), True),
    ("Proxy-Whatever", set(), True),
    ("X-Named", {"x-named"}, True),
    ("X-Other", {"x-named"}, False),
    ("Content-Type", set(), False),
    ("Host", set(), False),
])
def test_is_hop_by_hop(name: str, tokens: set[str], expected: bool) -> None:
    assert is_hop_by_hop(name, tokens) is expected


def test_new_request_id_is_random_hex() -> None:
    first, second = new_request_id(), new_request_id()
    assert first != second
    assert len(first) == 32
    int(first, 16)


# ----------------------------------------------------------------- response side


def test_response_hop_by_hop_server_and_date_are_removed() -> None:
    items = [
        ("Content-Type", "text/html"),
        ("Connection", "keep-alive, X-Backend-Internal"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Trailer", "X-Sum"),
        ("Upgrade", "h2c"),
        ("Proxy-Authenticate", "Basic"),
        ("X-Backend-Internal", "secret"),
        ("Server", "backend/1.0"),
        ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("Content-Length", "12"),
        ("ETag", '"v1"'),
    ]
    assert downstream_response_headers(items) == [
        ("Content-Type", "text/html"),
        ("Content-Length", "12"),
        ("ETag", '"v1"'),
    ]


def test_connection_tokens_are_case_insensitive() -> None:
    items = [("connection", "X-FOO"), ("x-foo", "1"), ("X-Bar", "2")]
    assert downstream_response_headers(items) == [("X-Bar", "2")]


def test_repeated_set_cookie_stays_separate() -> None:
    items = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"), ("X-A", "1")]
    assert downstream_response_headers(items) == items


def test_order_is_kept() -> None:
    items = [("X-3", "c"), ("X-1", "a"), ("X-2", "b")]
    assert downstream_response_headers(iter(items)) == items


@pytest.mark.parametrize(("name", "value"), [
    ("X-Evil", "a\r\nSet-Cookie: owned=1"),
    ("X-Evil", "a\nb"),
    ("X-Evil", "nul\x00byte"),
    ("X-Evil", "del\x7f"),
    ("Bad Name", "v"),
    ("Bad:Name", "v"),
    ("", "v"),
])
def test_invalid_response_header_is_dropped(name: str, value: str) -> None:
    items = [("X-Before", "1"), (name, value), ("X-After", "2")]
    assert downstream_response_headers(items) == [("X-Before", "1"), ("X-After", "2")]


def test_tabs_and_latin1_values_are_kept() -> None:
    items = [("X-Tab", "a\tb"), ("X-Latin", "caf\xe9"), ("X-Empty", "")]
    assert downstream_response_headers(items) == items


# ------------------------------------------------------------------ client address


TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.1/32", "::1/128"])


def test_no_trusted_networks_use_the_peer_even_with_xff() -> None:
    env = environ(REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR="1.1.1.1")
    assert client_address(env, ()) == "203.0.113.5"


def test_untrusted_peer_is_the_client_even_with_xff() -> None:
    env = environ(REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR="1.1.1.1")
    assert client_address(env, TRUSTED) == "203.0.113.5"


def test_trusted_peer_gives_the_rightmost_untrusted_address() -> None:
    env = environ(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.7, 10.0.0.9")
    assert client_address(env, TRUSTED) == "198.51.100.7"


def test_trusted_peer_with_single_xff() -> None:
    env = environ(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert client_address(env, TRUSTED) == "198.51.100.7"


def test_all_trusted_gives_the_leftmost() -> None:
    env = environ(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="10.1.1.1, 10.2.2.2")
    assert client_address(env, TRUSTED) == "10.1.1.1"


def test_trusted_peer_without_xff_is_the_peer() -> None:
    assert client_address(environ(REMOTE_ADDR="10.0.0.2"), TRUSTED) == "10.0.0.2"
    env = environ(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=" , ")
    assert client_address(env, TRUSTED) == "10.0.0.2"


def test_ipv6_peer_and_xff() -> None:
    env = environ(REMOTE_ADDR="::1", HTTP_X_FORWARDED_FOR="2001:db8::7")
    assert client_address(env, TRUSTED) == "2001:db8::7"


@pytest.mark.parametrize("garbage", ["unknown", "not an ip", '"quoted"', "1.2.3.4.5"])
def test_non_ip_xff_entry_is_never_the_client(garbage: str) -> None:
    # A forged entry that is not an address stops the walk (as nginx's realip does):
    # the last trusted hop is the client, never the forged text.
    env = environ(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=f"{garbage}, 10.0.0.3")
    assert client_address(env, TRUSTED) == "10.0.0.3"
    env = environ(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=garbage)
    assert client_address(env, TRUSTED) == "10.0.0.2"


def test_missing_peer_is_a_dash() -> None:
    env = environ()
    del env["REMOTE_ADDR"]
    assert client_address(env, ()) == "-"


@pytest.mark.parametrize("nominated", ["Host", "Content-Length", "Content-Type", "X-Forwarded-For",
                                       "X-Real-IP", "X-Request-ID", "X-Forwarded-Host", "X-Forwarded-Proto"])
def test_connection_cannot_remove_identity_framing_or_proxy_headers(nominated: str) -> None:
    headers = upstream(environ(HTTP_HOST="app.example", HTTP_CONNECTION=f"keep-alive, {nominated}",
                               CONTENT_TYPE="text/plain", CONTENT_LENGTH="3"))
    assert nominated.lower() in lower_names(headers)


def test_connection_still_removes_what_it_names() -> None:
    headers = upstream(environ(HTTP_CONNECTION="X-Secret", HTTP_X_SECRET="1"))
    assert "x-secret" not in lower_names(headers)


def test_absolute_form_host_replaces_the_clients() -> None:
    headers = upstream(environ(HTTP_HOST="b.test"), host="a.test", routed_host="a.test")
    assert headers["Host"] == "a.test"


def test_forwarded_host_is_the_routed_host() -> None:
    headers = upstream(environ(HTTP_HOST="App.Example:8080"), routed_host="app.example")
    assert headers["X-Forwarded-Host"] == "app.example"


def test_forwarding_claims_of_an_untrusted_peer_are_dropped() -> None:
    headers = upstream(environ(HTTP_X_FORWARDED_HOST="evil.test", HTTP_FORWARDED="host=evil.test"))
    assert headers["X-Forwarded-Host"] == "app.example"
    assert "forwarded" not in lower_names(headers)


def test_forwarding_claims_of_a_trusted_proxy_are_kept() -> None:
    headers = upstream(environ(HTTP_X_FORWARDED_HOST="shop.test", HTTP_FORWARDED="for=1.2.3.4"), trusted_peer=True)
    assert headers["X-Forwarded-Host"] == "shop.test"
    assert headers["Forwarded"] == "for=1.2.3.4"


@pytest.mark.parametrize(("value", "escaped"), [
    ("mywebsite", "mywebsite"),
    ("my website (prod)", "my website (prod)"),
    ("app\r\nX-Injected: 1", "app\\x0D\\x0AX-Injected: 1"),
    ("tab\there\x00\x7f", "tab\\x09here\\x00\\x7F"),
    ("café 日本", "caf\\xE9 \\u65E5\\u672C"),
])
def test_escape_header_value(value: str, escaped: str) -> None:
    assert escape_header_value(value) == escaped
