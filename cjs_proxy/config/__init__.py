"""Configuration: one settings registry, a loader, and the views collaborators read.

The YAML file is read by the gunicorn master (at start and on SIGHUP), checked against
the registry (``registry.SETTINGS``: every key, its default, its check from ``checks``
and its documentation) and turned into a read-only ``Settings`` mapping keyed by dotted
names (``server.maxSockets``) by ``loading``. A broken file raises ``ConfigError``
naming the file, the key and what is wrong. ``views`` derives what the listeners and
the store need, and gives each collaborator a typed view of its own keys. The README's
settings table is generated from the registry (``cjs-proxy settings``).
"""

from cjs_proxy.config.checks import EMBEDDED
from cjs_proxy.config.loading import (
    ENV_CONFIG,
    ENV_ETC,
    ENV_FLAVOR,
    PACKAGE_ROOT,
    ConfigError,
    Settings,
    check_files,
    config_path,
    default_etc_dir,
    load_settings,
    parse_settings,
)
from cjs_proxy.config.registry import SECTIONS, SETTINGS, SETTINGS_BY_KEY, Setting, settings_table
from cjs_proxy.config.views import (
    admin_addresses,
    driver_urls,
    embedded_socket_path,
    https_listeners,
    listen_addresses,
)

__all__ = [
    "EMBEDDED", "ENV_CONFIG", "ENV_ETC", "ENV_FLAVOR", "PACKAGE_ROOT", "SECTIONS", "SETTINGS", "SETTINGS_BY_KEY",
    "ConfigError", "Setting", "Settings", "admin_addresses", "check_files", "config_path", "default_etc_dir",
    "driver_urls", "embedded_socket_path", "https_listeners", "listen_addresses", "load_settings",
    "parse_settings", "settings_table",
]
