"""``cjs-proxy``: run the proxy, check a config file, and manage frontends and certificates in Redis."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import redis

from cjs_proxy import config
from cjs_proxy.admin import certs
from cjs_proxy.admin.active_health import HealthChecker, ProbeSettings
from cjs_proxy.admin.store import AdminStore
from cjs_proxy.config.views import CheckerSettings, view
from cjs_proxy.lifecycle.embedded import find_redis_server
from cjs_proxy.lifecycle.tlspolicy import tls_policy
from cjs_proxy.pipeline.redis_keys import split_driver_url
from cjs_proxy.pipeline.sentinel import resolve_master
from cjs_proxy.pipeline.sentinel_url import is_sentinel_url, parse_sentinel_url
from cjs_proxy.pipeline.store import StoreError
from cjs_proxy.registration import Registrar, RegistrationError, store_for

ADMIN_TIMEOUT = 5.0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Like Hipache's ``--dry``: exit 0 if the file is usable, 1 with the reason if not."""
    try:
        settings = config.load_settings(args.path)
        config.check_files(settings)
    except config.ConfigError as exc:
        print(f"cjs-proxy: configuration error: {exc}", file=sys.stderr)
        return 1
    for warning in tls_policy(settings).warnings:
        print(f"cjs-proxy: warning: {settings.path}: {warning}", file=sys.stderr)
    print(f"{settings.path}: OK")
    return 0


README_TABLE_START = "<!-- settings-table:start -->"
README_TABLE_END = "<!-- settings-table:end -->"


def with_settings_table(readme: str) -> str:
    """``readme`` with the text between the table markers replaced by the current table."""
    start = readme.index(README_TABLE_START) + len(README_TABLE_START)
    end = readme.index(README_TABLE_END)
    return f"{readme[:start]}\n{config.settings_table()}\n{readme[end:]}"


def cmd_settings(args: argparse.Namespace) -> int:
    if args.readme:
        path = Path(args.readme)
        path.write_text(with_settings_table(path.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    print(config.settings_table())
    return 0


def gunicorn_config_file() -> Path:
    candidates = [config.PACKAGE_ROOT / "etc" / "gunicorn.py",
                  Path(sys.prefix) / "share" / "cjs-proxy" / "etc" / "gunicorn.py"]
    return next((p for p in candidates if p.is_file()), candidates[0])


def cmd_run(args: argparse.Namespace) -> int:
    """Exec gunicorn exactly as the README does: ``gunicorn -c etc/gunicorn.py cjs_proxy.wsgi``."""
    if args.config:
        os.environ[config.ENV_CONFIG] = str(Path(args.config).resolve())
    argv = [sys.executable, "-m", "gunicorn", "-c", str(gunicorn_config_file()), "cjs_proxy.wsgi"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def _store(args: argparse.Namespace) -> AdminStore:
    settings = config.load_settings(args.config)
    read_url, write_url = config.driver_urls(settings)
    return AdminStore.from_urls(read_url, write_url, ADMIN_TIMEOUT, max_connections=2)


def cmd_add(args: argparse.Namespace) -> int:
    _store(args).set_frontend(args.host.lower(), args.identifier, args.backends)
    print(f"frontend:{args.host.lower()} -> {args.identifier} {' '.join(args.backends)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """The static list (Hipache's ids), then the registered backends with their time left."""
    store, host = _store(args), args.host.lower()
    values, dead = store.get_frontend(host)
    registered = store.registrations(host)
    if not values and not registered:
        print(f"no frontend for {args.host}", file=sys.stderr)
        return 1
    print(f"identifier: {values[0] if values else store.identifier(host) or host}")
    for i, url in enumerate(values[1:]):
        print(f"  #{i} {url}{'  (dead)' if i in dead else ''}")
    dead_urls = store.dead_urls(host) if registered else set()
    for url, left in registered:
        print(f"  registered {url}  ttl {left:.1f}s{'  (dead)' if url in dead_urls else ''}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    return 0 if _store(args).delete_frontend(args.host.lower()) else 1


def cmd_list(args: argparse.Namespace) -> int:
    """Each host with a frontend or registered backends, and how many of each it has."""
    store = _store(args)
    hosts = sorted(set(store.frontend_hosts()) | set(store.registered_hosts()))
    for host in hosts:
        values, _ = store.get_frontend(host)
        registered = len(store.registrations(host))
        if values or registered:
            print(f"{host}  {max(len(values) - 1, 0)} static, {registered} registered")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """Register a backend in the foreground until SIGTERM/SIGINT, then remove it (a sidecar)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [register] %(levelname)s %(message)s")
    try:
        store = store_for(None, args.ttl, args.config)
        registrar = Registrar(store, args.host, args.backend_url, args.ttl, args.weight, args.identifier)
    except RegistrationError as exc:
        print(f"cjs-proxy register: {exc}", file=sys.stderr)
        return 2
    try:
        registrar.register()
    except (StoreError, redis.RedisError, OSError) as exc:
        print(f"cjs-proxy register: cannot register {args.backend_url} for {args.host}: "
              f"redis unreachable ({exc})", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    registrar.run(stop)
    registrar.deregister()
    return 0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def cmd_cert_set(args: argparse.Namespace) -> int:
    """Check the pair, then write ``tls:<name>``: served on the next handshake, no reload."""
    name = certs.normalize_name(args.name)
    chain, key = Path(args.cert).read_bytes(), Path(args.key).read_bytes()
    try:
        info = certs.check_pair(name, chain, key)
    except certs.CertificateProblem as exc:
        print(f"cjs-proxy: refusing {args.cert} for {name}: {exc}", file=sys.stderr)
        return 1
    _store(args).set_certificate(name, chain, key)
    print(f"tls:{name} set")
    print("\n".join(certs.describe(info, _now())))
    return 0


def cmd_cert_show(args: argparse.Namespace) -> int:
    name = certs.normalize_name(args.name)
    chain = _store(args).get_certificate_chain(name)
    if chain is None:
        print(f"no certificate for {name}", file=sys.stderr)
        return 1
    try:
        info = certs.inspect(chain)
    except certs.CertificateProblem as exc:
        print(f"tls:{name}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(certs.describe(info, _now())))
    return 0


def cmd_cert_remove(args: argparse.Namespace) -> int:
    name = certs.normalize_name(args.name)
    if _store(args).delete_certificate(name):
        return 0
    print(f"no certificate for {name}", file=sys.stderr)
    return 1


def cmd_cert_list(args: argparse.Namespace) -> int:
    """One line per ``tls:`` key: name, expiry, the certificate's names, and a flag when it
    expires within ``certs.EXPIRY_WARNING_DAYS`` days (or already did, or cannot be read)."""
    store, now = _store(args), _now()
    for name in store.certificate_names():
        chain = store.get_certificate_chain(name)
        try:
            info = certs.inspect(chain or b"")
        except certs.CertificateProblem as exc:
            print(f"{name}  MALFORMED: {exc}")
            continue
        flag = info.expiry_flag(now)
        line = f"{name}  expires {info.not_after:%Y-%m-%d}  names: {', '.join(info.names)}"
        print(f"{line}  {flag}" if flag else line)
    return 0


def cmd_health_check(args: argparse.Namespace) -> int:
    """Run the active health checker (``--rounds N`` for a bounded run)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [health-check] %(levelname)s %(message)s")
    settings = config.load_settings(args.config)
    options = view(CheckerSettings, settings)
    probe_settings = ProbeSettings(path=options.path, timeout=options.timeout)
    # Marks outlive a few missed rounds, never the checker itself.
    dead_ttl = max(options.dead_ttl, int(3 * options.interval) + 1)
    checker = HealthChecker(_store(args), probe_settings, options.interval, dead_ttl,
                            concurrency=options.concurrency)
    checker.run_forever(rounds=args.rounds)
    return 0


def redis_cli_target(driver_url: str) -> list[str]:
    """redis-cli's connection arguments for a driver URL; through Sentinel, the master's
    address as the sentinels name it now (redis-cli speaks to one node)."""
    if is_sentinel_url(driver_url):
        target = parse_sentinel_url(driver_url)
        host, port = resolve_master(target, ADMIN_TIMEOUT)
        argv = ["-h", host, "-p", str(port), "-n", str(target.db)]
        if target.username:
            argv += ["--user", target.username]
        if target.password:  # through the environment: not on the command line, for ps to show
            os.environ["REDISCLI_AUTH"] = target.password
        return argv + (["--tls"] if target.tls else [])
    url, _prefix = split_driver_url(driver_url)
    return ["-s", url[len("unix://"):]] if url.startswith("unix://") else ["-u", url]


def cmd_redis_cli(args: argparse.Namespace) -> int:
    """redis-cli connected to the configured store (the embedded one, or the master behind Sentinel)."""
    settings = config.load_settings(args.config)
    connection = redis_cli_target(config.driver_urls(settings)[1])
    server_binary = Path(find_redis_server(settings["embedded.redisServer"]))
    binary = shutil.which("redis-cli") or str(server_binary.with_name("redis-cli"))
    os.execv(binary, [binary, *connection, *args.args])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cjs-proxy", description=__doc__)
    parser.add_argument("--config", help="config file (default: CJS_PROXY_CONFIG, SETTINGS_FLAVOR, etc/config.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="check a config file and exit non-zero if it is broken")
    check.add_argument("path", nargs="?", help="file to check (default: the one the proxy would read)")
    check.set_defaults(func=cmd_check_config)
    table = sub.add_parser("settings", help="print the settings table (Markdown)")
    table.add_argument("--readme", metavar="FILE", help="rewrite the table between the markers in FILE instead")
    table.set_defaults(func=cmd_settings)
    run = sub.add_parser("run", help="start the proxy (gunicorn -c etc/gunicorn.py cjs_proxy.wsgi)")
    run.set_defaults(func=cmd_run)
    add = sub.add_parser("add", help="set a frontend: HOST IDENTIFIER BACKEND_URL...")
    add.add_argument("host")
    add.add_argument("identifier")
    add.add_argument("backends", nargs="+")
    add.set_defaults(func=cmd_add)
    for name, func, text in (("show", cmd_show, "show a frontend and its dead backends"),
                             ("remove", cmd_remove, "delete a frontend")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("host")
        cmd.set_defaults(func=func)
    sub.add_parser("list", help="list the hosts that have a frontend, with their backend counts").set_defaults(
        func=cmd_list)
    register = sub.add_parser("register", help="register a backend while running (renewed; removed on SIGTERM)")
    register.add_argument("host")
    register.add_argument("backend_url")
    register.add_argument("--ttl", type=int, default=10, help="seconds it lasts unless renewed (default 10)")
    register.add_argument("--identifier", help="the frontend's identifier when it has no static list")
    register.add_argument("--weight", type=int, help="weight in weights:<host> (default: 1)")
    register.set_defaults(func=cmd_register)
    _add_cert_parser(sub)
    health = sub.add_parser("health-check", help="probe every backend and keep dead:<host> marks current")
    health.add_argument("--rounds", type=int, default=None, help="stop after N rounds (default: run forever)")
    health.set_defaults(func=cmd_health_check)
    cli = sub.add_parser("redis-cli", help="redis-cli connected to the configured store")
    cli.add_argument("args", nargs=argparse.REMAINDER)
    cli.set_defaults(func=cmd_redis_cli)
    return parser


def _add_cert_parser(sub: argparse._SubParsersAction) -> None:
    cert = sub.add_parser("cert", help="certificates served by SNI from Redis (tls:<servername>)")
    actions = cert.add_subparsers(dest="action", required=True)
    put = actions.add_parser("set", help="check and store a certificate and its key: NAME CERT.pem KEY.pem")
    put.add_argument("name", help="server name, or *.example.com for a wildcard")
    put.add_argument("cert", help="PEM certificate chain (the server's certificate first)")
    put.add_argument("key", help="PEM private key, unencrypted")
    put.set_defaults(func=cmd_cert_set)
    for name, func, text in (("show", cmd_cert_show, "names, expiry and issuer of a stored certificate"),
                             ("remove", cmd_cert_remove, "delete a stored certificate")):
        cmd = actions.add_parser(name, help=text)
        cmd.add_argument("name")
        cmd.set_defaults(func=func)
    actions.add_parser("list", help=f"every stored certificate; flags those expiring within "
                                    f"{certs.EXPIRY_WARNING_DAYS} days").set_defaults(func=cmd_cert_list)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except config.ConfigError as exc:
        print(f"cjs-proxy: configuration error: {exc}", file=sys.stderr)
        return 1
    except (StoreError, redis.RedisError, OSError) as exc:
        print(f"cjs-proxy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
