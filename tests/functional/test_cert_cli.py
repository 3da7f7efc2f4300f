"""``cjs-proxy cert set/show/remove/list`` against a real redis-server, through the real CLI."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
import yaml
from cryptography.hazmat.primitives import serialization

from tests.harness import ROOT

PREFIX = "cjs:"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture()
def config_path(tmp_path, redis_server, rdb) -> Path:
    """A config whose driver has a ``#prefix``: the CLI must write under it."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"driver": f"{redis_server.url}#{PREFIX}"}))
    return path


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CJS_PROXY_", "SETTINGS_FLAVOR"))}
    return subprocess.run([sys.executable, "-m", "cjs_proxy.admin.cli", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=30, env=environ, cwd=ROOT)


def write_pair(tmp_path: Path, issued: trustme.LeafCert, stem: str) -> tuple[str, str]:
    cert, key = tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def in_days(days: int) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)


def test_set_show_list_remove(config_path, tmp_path, ca, rdb):
    cert, key = write_pair(tmp_path, ca.issue_cert("c.test", "www.c.test", not_after=in_days(90)), "c")
    added = cli(config_path, "cert", "set", "C.test", cert, key)
    assert added.returncode == 0, added.stderr
    assert "tls:c.test set" in added.stdout
    assert "names: c.test, www.c.test" in added.stdout
    assert f"expires: {in_days(90):%Y-%m-%d}" in added.stdout
    stored = rdb.hgetall(f"{PREFIX}tls:c.test")
    assert stored == {"certificate": Path(cert).read_text(), "key": Path(key).read_text()}

    shown = cli(config_path, "cert", "show", "c.test")
    assert shown.returncode == 0, shown.stderr
    assert "names: c.test, www.c.test" in shown.stdout
    assert "issuer: " in shown.stdout and "EXPIRES" not in shown.stdout
    assert "PRIVATE KEY" not in shown.stdout + shown.stderr

    wild_cert, wild_key = write_pair(tmp_path, ca.issue_cert("*.w.test"), "w")
    assert cli(config_path, "cert", "set", "*.w.test", wild_cert, wild_key).returncode == 0
    listed = cli(config_path, "cert", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["*.w.test", "c.test"]
    assert "PRIVATE KEY" not in listed.stdout

    assert cli(config_path, "cert", "remove", "c.test").returncode == 0
    assert not rdb.exists(f"{PREFIX}tls:c.test")
    gone = cli(config_path, "cert", "remove", "c.test")
    assert gone.returncode == 1 and "no certificate for c.test" in gone.stderr
    assert cli(config_path, "cert", "show", "c.test").returncode == 1


def test_set_refuses_what_would_not_be_served(config_path, tmp_path, ca, rdb):
    cert, _key = write_pair(tmp_path, ca.issue_cert("m.test"), "m")
    _other_cert, other_key = write_pair(tmp_path, ca.issue_cert("m.test"), "other")
    mismatched = cli(config_path, "cert", "set", "m.test", cert, other_key)
    assert mismatched.returncode == 1
    assert "the key does not match the certificate" in mismatched.stderr

    _cert, key = write_pair(tmp_path, ca.issue_cert("m.test"), "m2")
    wrong_name = cli(config_path, "cert", "set", "n.test", *write_pair(tmp_path, ca.issue_cert("m.test"), "m3"))
    assert wrong_name.returncode == 1 and "the certificate is for m.test, not n.test" in wrong_name.stderr

    issued = ca.issue_cert("e.test")
    private = serialization.load_pem_private_key(issued.private_key_pem.bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"secret")))
    locked = cli(config_path, "cert", "set", "e.test", write_pair(tmp_path, issued, "e")[0], str(encrypted))
    assert locked.returncode == 1 and "encrypted" in locked.stderr

    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    unreadable = cli(config_path, "cert", "set", "m.test", str(garbage), key)
    assert unreadable.returncode == 1 and "not a PEM certificate chain" in unreadable.stderr
    assert not rdb.keys(f"{PREFIX}tls:*")  # nothing was written


def test_list_flags_certificates_expiring_within_14_days(config_path, tmp_path, ca, rdb):
    soon = write_pair(tmp_path, ca.issue_cert("soon.test", not_after=in_days(5)), "soon")
    later = write_pair(tmp_path, ca.issue_cert("later.test", not_after=in_days(30)), "later")
    set_soon = cli(config_path, "cert", "set", "soon.test", *soon)
    assert set_soon.returncode == 0 and "EXPIRES IN 4 DAYS" in set_soon.stdout
    assert cli(config_path, "cert", "set", "later.test", *later).returncode == 0
    rdb.hset(f"{PREFIX}tls:broken.test", mapping={"certificate": "garbage", "key": "garbage"})
    listed = cli(config_path, "cert", "list").stdout.splitlines()
    by_name = {line.split()[0]: line for line in listed}
    assert by_name["soon.test"].endswith("EXPIRES IN 4 DAYS")
    assert "EXPIRES" not in by_name["later.test"] and f"expires {in_days(30):%Y-%m-%d}" in by_name["later.test"]
    assert "MALFORMED" in by_name["broken.test"]
