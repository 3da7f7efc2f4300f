"""Dropping root: which account the workers run as, and whether that account can run them.

Started as root (to bind ports 80/443), the gunicorn master keeps root and its workers
switch to ``user``/``group`` (Hipache's keys). Mistakes are caught at start-up, before
anything listens, instead of showing up as dying or useless workers:

- keeping root by accident: a worker may run as root only when ``user`` says so in the
  config file (``user: root``), never through a default;
- the embedded store, whose socket only root may use, with workers that are not root;
- an account that cannot read the proxy: the workers import Python modules *after* the
  switch, so an installation under ``/root`` (a pyenv, a virtualenv in a home folder)
  makes every worker die with ``No module named 'hashlib'``. A forked child takes the
  workers' identity and tries the files they will need.
"""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cjs_proxy import config


class PrivilegeError(Exception):
    """The workers' identity is unusable; the message says why and what to change."""


@dataclass(frozen=True)
class Identity:
    """Who the workers run as: gunicorn's ``user``/``group`` and the supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def worker_identity(user: str | int, group: str | int | None, user_explicit: bool) -> Identity:
    """Resolve ``user``/``group``; a null group is the user's primary group.

    Raises ``PrivilegeError`` for unknown names and for root that the file did not ask for.
    """
    try:
        entry = pwd.getpwuid(int(user)) if isinstance(user, int) or user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"user: {user!r} does not exist on this system; set `user` to an existing "
                             "unprivileged account (the default is www-data, as in Hipache)") from None
    if entry.pw_uid == 0 and not user_explicit:
        raise PrivilegeError("started as root, and `user` resolves to root without the config file saying "
                             "so: set `user` to an unprivileged account, or `user: root` to keep root knowingly")
    if group is None:
        gid = entry.pw_gid
    else:
        try:
            gid = int(group) if isinstance(group, int) or group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"group: {group!r} does not exist on this system") from None
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    return Identity(entry.pw_name, entry.pw_uid, gid, groups)


def required_paths(settings: config.Settings) -> list[tuple[str, str, int]]:
    """(what, path, access mode) for every file a worker opens after dropping root."""
    wanted: list[tuple[str, str | None, int]] = [
        ("the Python installation", os.path.join(sysconfig.get_paths()["stdlib"], "hashlib.py"), os.R_OK),
        ("the Python installation", _origin("_hashlib"), os.R_OK),
    ]
    wanted += [("the installed Python packages", _origin(name), os.R_OK)
               for name in ("gunicorn", "gevent", "requests", "redis", "yaml")]
    wanted += [
        ("cjs-proxy", str(Path(config.__file__).parent.with_name("wsgi.py")), os.R_OK),
        ("cjs-proxy", _origin("workers.gevent_proxy"), os.R_OK),
        ("the config file", settings.path, os.R_OK),
    ]
    access_log = settings["server.accessLog"]
    if access_log and access_log != "-":
        target = access_log if os.path.exists(access_log) else os.path.dirname(access_log)
        wanted.append(("the access log", target, os.W_OK))
    return [(what, path, mode) for what, path, mode in wanted if path]


def _origin(module: str) -> str | None:
    """The file a module is loaded from, found without importing it (the master must stay light)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


def first_inaccessible(identity: Identity, paths: Iterable[tuple[str, str, int]]) -> tuple[str, str] | None:
    """(what, path) of the first path ``identity`` cannot use, tried by a child that takes that identity.

    See ``usable`` for what is tried.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the workers' user, try, report, exit without cleanup
        answer = b""
        try:
            os.close(read_fd)
            os.setgroups(list(identity.groups))
            os.setgid(identity.gid)
            os.setuid(identity.uid)
            for what, path, mode in paths:
                if not usable(path, mode):
                    answer = f"{what}\0{path}".encode()
                    break
        except BaseException as exc:  # anything here must reach the parent
            answer = f"the check itself\0{exc}".encode()
        finally:
            try:
                os.write(write_fd, answer)
            finally:
                os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    if not chunks:
        return None
    what, _, path = b"".join(chunks).decode(errors="replace").partition("\0")
    return what, path


def usable(path: str, mode: int) -> bool:
    """Whether the current process can use ``path``: read a file whose folder it can list
    (Python's importer lists folders), or write a file, or create files in a folder."""
    if mode == os.R_OK:
        return os.access(os.path.dirname(path), os.R_OK | os.X_OK) and os.access(path, os.R_OK)
    return os.access(path, mode | (os.X_OK if os.path.isdir(path) else 0))


#: What a worker does when it cannot use a path of this kind.
CONSEQUENCES = {
    "the config file": "cannot load its settings",
    "the access log": "cannot open the access log",
}
_checked: dict[Any, None] = {}


def gunicorn_identity(settings: config.Settings) -> dict[str, Any]:
    """gunicorn's ``user``/``group`` for a master started as root, once the workers' identity
    is known to be deliberate, able to reach the store and able to read what they load."""
    identity = worker_identity(settings["user"], settings["group"], "user" in settings.explicit)
    if identity.uid != 0 and settings["driver"] is None:
        raise PrivilegeError(
            f"the embedded store (no `driver`) runs as root with a socket only root may use, so workers "
            f"running as {identity.name!r} could not reach it: set `driver` to a Redis URL, or keep root "
            "with `user: root`")
    if identity.uid != 0:
        paths = required_paths(settings)
        key = (identity, tuple(paths))
        if key not in _checked:  # gunicorn reads its config again on SIGHUP: try only what changed
            problem = first_inaccessible(identity, paths)
            if problem is not None:
                what, path = problem
                verb = "write" if what == "the access log" else "read"
                consequence = CONSEQUENCES.get(what, "cannot import its modules (\"No module named ...\")")
                raise PrivilegeError(
                    f"the workers run as user {identity.name!r} (uid {identity.uid}) once root is dropped, "
                    f"and that user cannot {verb} {what} ({path}): every worker would die at start because "
                    f"it {consequence}. Make it {verb}able by {identity.name} (or install cjs-proxy where "
                    f"{identity.name} can read it), or set `user` to an account that can.")
            _checked[key] = None
    return {"user": identity.uid, "group": identity.gid}


def drop(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with that user's supplementary groups (a worker, right after the fork).

    gunicorn's own switch (``util.set_owner_process``) leaves the worker either in root's
    supplementary groups (``initgroups`` off: it only calls setgid/setuid) or with root's
    primary group (``initgroups`` on: it calls initgroups *instead of* setgid). Done here
    first and completely, gunicorn's switch then finds nothing left to do.
    """
    if os.getuid() != 0 or uid == 0:
        return
    try:
        groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:  # a bare uid with no account: no supplementary groups at all
        groups = [gid]
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
