"""The config file as operators meet it: `cjs-proxy check-config`, gunicorn start-up, flavors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests
import trustme
import yaml

from cjs_proxy import config
from tests.harness import ANSWER_TIMEOUT, GUNICORN_CONF, ROOT, Process, Proxy, free_port, port_open

ETC = ROOT / "etc"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cjs-proxy ARGS`` in a fresh interpreter (the installed console script's code path)."""
    environ = {k: v for k, v in os.environ.items()
               if k not in (config.ENV_CONFIG, config.ENV_FLAVOR, config.ENV_ETC)}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "cjs_proxy.admin.cli", *args], capture_output=True,
                          text=True, timeout=30, env=environ, cwd=ROOT)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -------------------------------------------------------------------- check-config


def test_shipped_configs_are_valid():
    for name in ("config.yaml", "config_production.yaml"):
        result = cli("check-config", str(ETC / name))
        assert result.returncode == 0, (name, result.stderr)
        assert "OK" in result.stdout


def test_console_script_runs():
    script = Path(sys.executable).with_name("cjs-proxy")
    if not script.exists():  # pragma: no cover - only in odd installs
        return
    result = subprocess.run([str(script), "check-config", str(ETC / "config.yaml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path / "typo.yaml", "server:\n  wrokers: 2\n")
    result = cli("check-config", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "server.wrokers" in result.stderr
    assert "server.workers" in result.stderr  # the suggestion


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path / "type.yaml", 'server:\n  workers: "ten"\n')
    result = cli("check-config", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "server.workers" in result.stderr
    assert "ten" in result.stderr


def test_unknown_top_level_key_is_named(tmp_path):
    path = write(tmp_path / "top.yaml", "drvier: redis://127.0.0.1:6379/0\n")
    result = cli("check-config", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr and "drvier" in result.stderr


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "broken.yaml", "server:\n  workers: 2\n  debug: [true\nhttp:\n  port: 80\n")
    result = cli("check-config", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "line " in result.stderr
    line = int(result.stderr.split("line ", 1)[1].split(",")[0].split(":")[0])
    assert 3 <= line <= 5, result.stderr  # the unclosed list opens on line 3


def test_missing_file_is_named(tmp_path):
    result = cli("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert str(tmp_path / "nope.yaml") in result.stderr


def test_gunicorn_with_broken_config_exits_quickly_naming_file_and_key(tmp_path, redis_server):
    broken = Proxy(tmp_path / "broken", redis_server.url, wait=False, server_workers="x")
    try:
        broken.proc.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"gunicorn kept running with a broken config:\n{broken.log()[-2000:]}") from None
    finally:
        broken.stop()
    assert broken.proc.returncode != 0
    output = broken.log()
    assert str(broken.config_path) in output
    assert "server.workers" in output
    assert not port_open(broken.port)


#: The ``https`` section of Hipache's own sample config (hipache/hipache README.md,
#: "Configuration"), minus its ``"passphrase": undefined``, which is not JSON.
HIPACHE_HTTPS = {
    "bind": [],
    "port": 443,
    "ca": [],
    "secureProtocol": "SSLv23_method",
    "secureOptions": 50331648,
    "key": "/etc/ssl/ssl.key",
    "cert": "/etc/ssl/ssl.crt",
    "ciphers": "DH+ECDSA+AESGCM EECDH+aRSA+AESGCM EECDH+ECDSA+SHA384 EECDH+ECDSA+SHA256 EECDH+a "
               "RSA+SHA384 EECDH+aRSA+SHA256 EECDH+aRSA+RC4 EECDH EDH+aRSA RC4 !aNULL !eNULL !LOW "
               "!3DES !MD5 !EXP !PSK !SRP !DSS !RC4",
    "honorCipherOrder": True,
}


def test_hipache_sample_https_section_passes_check_config(tmp_path):
    """An operator's Hipache config.json keeps working, TLS keys included, without warnings."""
    ca = trustme.CA()
    issued = ca.issue_cert("www.example.test")
    key, cert = tmp_path / "ssl.key", tmp_path / "ssl.crt"
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    https = {**HIPACHE_HTTPS, "key": str(key), "cert": str(cert)}
    for name, text in (("config.json", json.dumps({"https": https}, indent=4)),
                       ("config.yaml", yaml.safe_dump({"https": https}))):
        path = write(tmp_path / name, text)
        result = cli("check-config", str(path))
        assert result.returncode == 0, (name, result.stderr)
        assert result.stdout.strip() == f"{path}: OK"
        assert result.stderr == "", result.stderr


def test_tls_keys_python_cannot_honour_are_accepted_with_one_warning_each(tmp_path):
    path = write(tmp_path / "old.yaml", yaml.safe_dump(
        {"https": {"secureProtocol": "TLSv1_method", "secureOptions": 0x02000000 | 0x00000004}}))
    result = cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2, warnings
    assert "https.secureProtocol" in warnings[0] and "TLS 1.2" in warnings[0]
    assert "https.secureOptions" in warnings[1] and "0x4" in warnings[1]


def test_invalid_cipher_string_is_a_config_error_naming_the_key(tmp_path):
    path = write(tmp_path / "ciphers.yaml", 'https:\n  ciphers: "NOT-A-CIPHER:ALSO-NOT"\n')
    result = cli("check-config", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr and "https.ciphers" in result.stderr


# ------------------------------------------------------------------------- flavors


def flavored_etc(tmp_path: Path, flavor_port: int) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    user = "root" if os.geteuid() == 0 else os.getuid()
    base = {"server": {"workers": 1, "accessLog": None}, "driver": "redis://127.0.0.1:1/0", "user": user}
    write(etc / "config_xyz.yaml", yaml.safe_dump({**base, "http": {"port": flavor_port}}))
    # The default file is broken: reading it instead of the flavor's must fail loudly.
    write(etc / "config.yaml", "server:\n  workers: nope\n")
    return etc


def test_settings_flavor_picks_config_file(tmp_path):
    etc = flavored_etc(tmp_path, 8123)
    env = {config.ENV_ETC: str(etc), config.ENV_FLAVOR: "xyz"}
    assert config.config_path(env) == etc / "config_xyz.yaml"
    assert config.load_settings(environ=env)["http.port"] == 8123
    assert config.config_path({config.ENV_ETC: str(etc)}) == etc / "config.yaml"
    # CJS_PROXY_CONFIG wins over the flavor.
    assert config.config_path({**env, config.ENV_CONFIG: "/x.yaml"}) == Path("/x.yaml")

    result = cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert str(etc / "config_xyz.yaml") in result.stdout
    result = cli("check-config", env={config.ENV_ETC: str(etc)})
    assert result.returncode == 1
    assert str(etc / "config.yaml") in result.stderr


def test_proxy_started_with_settings_flavor_reads_flavor_file(tmp_path):
    port = free_port()
    etc = flavored_etc(tmp_path, port)
    env = {k: v for k, v in os.environ.items() if k != config.ENV_CONFIG}
    env.update({config.ENV_ETC: str(etc), config.ENV_FLAVOR: "xyz"})
    proc = Process([sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "cjs_proxy.wsgi"],
                   tmp_path / "proxy.log", env=env)
    try:
        proc.wait_until(lambda: port_open(port), what="proxy with the flavoured config")
        response = requests.get(f"http://127.0.0.1:{port}/", timeout=ANSWER_TIMEOUT,
                                headers={"Host": "__ping__", "Connection": "close"})
        assert response.status_code == 200 and response.text == "ok"
    finally:
        proc.stop()


# ------------------------------------------------------------------------ settings


def test_settings_table_lists_every_key():
    result = cli("settings")
    assert result.returncode == 0, result.stderr
    for setting in config.SETTINGS:
        assert f"`{setting.key}`" in result.stdout, setting.key
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
    assert len(rows) == len(config.SETTINGS)
