"""The certificate cache's rules: what is asked of Redis, when, and what a handshake gets."""

from __future__ import annotations

import ssl

import pytest

from cjs_proxy.lifecycle.redis_certs import (
    NEGATIVE_TTL,
    RETRY_AFTER_ERROR,
    UNTRACKED_TTL,
    RedisCertificates,
    lookup_names,
)
from cjs_proxy.pipeline.store import StoreError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeFeed:
    """The invalidation feed: connected or not, and whether a change arrived."""

    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.pending_change = False

    def changed(self) -> bool:
        changed, self.pending_change = self.pending_change or not self.connected, False
        return changed


class FakeRedis:
    """``tls:`` hashes by name; counts lookups; fails while ``down``."""

    def __init__(self) -> None:
        self.hashes: dict[str, tuple[bytes, bytes]] = {}
        self.calls: list[list[str]] = []
        self.down = False

    def fetch(self, names: list[str]) -> tuple[str, bytes, bytes] | None:
        self.calls.append(names)
        if self.down:
            raise StoreError("ConnectionError: refused")
        for name in names:
            if name in self.hashes:
                return (f"tls:{name}", *self.hashes[name])
        return None


def build(chain: bytes, key: bytes) -> ssl.SSLContext:
    """A context per PEM (the real one is tested functionally); "bad" PEM is refused as ssl would."""
    if chain == b"bad":
        raise ssl.SSLError("PEM lib")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.pem = chain  # type: ignore[attr-defined]
    return context


def certs(store: FakeRedis, feed: FakeFeed | None, clock: FakeClock) -> RedisCertificates:
    return RedisCertificates(store.fetch, build, feed, wait_timeout=1, clock=clock)  # type: ignore[arg-type]


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


def test_lookup_names_are_the_host_then_its_one_label_wildcard() -> None:
    assert lookup_names("A.Example.COM.") == ["a.example.com", "*.example.com"]
    assert lookup_names("localhost") == ["localhost"]
    assert lookup_names("bad name") is None
    assert lookup_names("*.example.com") is None  # not a name a client asks for


def test_a_certificate_is_read_once_and_kept_until_a_change(clock: FakeClock) -> None:
    store, feed = FakeRedis(), FakeFeed()
    store.hashes["a.test"] = (b"one", b"k")
    cache = certs(store, feed, clock)
    first = cache.context_for("a.test")
    clock.now += 3600
    assert cache.context_for("a.test") is first
    assert len(store.calls) == 1
    store.hashes["a.test"] = (b"two", b"k")
    feed.pending_change = True
    second = cache.context_for("a.test")
    assert second is not None and second.pem == b"two"  # type: ignore[attr-defined]


def test_no_certificate_is_believed_for_a_few_seconds(clock: FakeClock) -> None:
    store = FakeRedis()
    cache = certs(store, FakeFeed(), clock)
    for _ in range(50):
        assert cache.context_for("nobody.test") is None
    assert len(store.calls) == 1
    clock.now += NEGATIVE_TTL
    cache.context_for("nobody.test")
    assert len(store.calls) == 2


def test_without_tracking_nothing_is_believed_longer_than_untracked_ttl(clock: FakeClock) -> None:
    store = FakeRedis()
    store.hashes["a.test"] = (b"one", b"k")
    cache = certs(store, FakeFeed(connected=False), clock)
    cache.context_for("a.test")
    cache.context_for("a.test")
    assert len(store.calls) == 1
    clock.now += UNTRACKED_TTL
    cache.context_for("a.test")
    assert len(store.calls) == 2


def test_answers_read_before_tracking_started_are_forgotten(clock: FakeClock) -> None:
    store, feed = FakeRedis(), FakeFeed(connected=False)
    store.hashes["a.test"] = (b"one", b"k")
    cache = certs(store, feed, clock)
    cache.context_for("a.test")
    feed.connected = True  # a change may have been missed in between
    cache.context_for("a.test")
    assert len(store.calls) == 2


def test_one_context_per_key_and_content(clock: FakeClock) -> None:
    store = FakeRedis()
    store.hashes["*.w.test"] = (b"wild", b"k")
    cache = certs(store, FakeFeed(), clock)
    contexts = {id(cache.context_for(f"host{i}.w.test")) for i in range(20)}
    assert len(contexts) == 1
    assert store.calls[0] == ["host0.w.test", "*.w.test"]


def test_malformed_pem_gets_the_default_and_one_line_naming_the_key(clock: FakeClock,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = FakeRedis()
    store.hashes["bad.test"] = (b"bad", b"k")
    store.hashes["half.test"] = (b"", b"k")
    cache = certs(store, FakeFeed(), clock)
    for _ in range(2):
        assert cache.context_for("bad.test") is None
        clock.now += NEGATIVE_TTL  # asked Redis again each time: still one line per LOG_INTERVAL
    assert cache.context_for("half.test") is None
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "tls:bad.test" in line]) == 1
    assert any("tls:half.test" in line and "no certificate field" in line for line in lines)


def test_redis_down_serves_the_last_certificate_read_and_rests(clock: FakeClock,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    store, feed = FakeRedis(), FakeFeed()
    store.hashes["a.test"] = (b"one", b"k")
    cache = certs(store, feed, clock)
    known = cache.context_for("a.test")
    store.down, feed.connected = True, False  # the feed goes with Redis
    clock.now += UNTRACKED_TTL
    for _ in range(20):
        assert cache.context_for("a.test") is known
        assert cache.context_for("other.test") is None
    assert len(store.calls) == 2  # one failed attempt, then RETRY_AFTER_ERROR of rest
    clock.now += RETRY_AFTER_ERROR
    cache.context_for("other.test")
    assert len(store.calls) == 3
    assert len([r for r in caplog.records if "redis unreachable" in r.getMessage()]) == 1


def test_pem_context_builds_from_memory_and_refuses_what_cannot_be_served(tmp_path, monkeypatch) -> None:
    """Bad PEM, a key for another certificate and an encrypted key raise (never prompt);
    the private temporary file is gone either way."""
    import tempfile

    import trustme
    from cryptography.hazmat.primitives import serialization

    from cjs_proxy.lifecycle.tls import pem_context

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ca = trustme.CA()
    issued, other = ca.issue_cert("x.test"), ca.issue_cert("x.test")
    chain, key = issued.cert_chain_pems[0].bytes(), issued.private_key_pem.bytes()
    assert isinstance(pem_context(chain, key), ssl.SSLContext)
    encrypted = serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(ValueError, match="encrypted"):
        pem_context(chain, encrypted)
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        pem_context(chain, other.private_key_pem.bytes())
    with pytest.raises(ssl.SSLError):
        pem_context(b"not pem", b"not pem")
    assert list(tmp_path.iterdir()) == []
