"""Worker lifecycle logic: the memory watchdog, the successor-first handover, the root drop."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cjs_proxy import config
from cjs_proxy.lifecycle import gunicorn_conf, privileges
from cjs_proxy.lifecycle.handover import READY, RETIRE, HandoverChannel
from cjs_proxy.lifecycle.watchdog import MIB, MemoryWatchdog, rss_bytes

# ------------------------------------------------------------------- watchdog


class Quiet:
    def warning(self, *args: Any) -> None:
        pass


def test_rss_bytes_matches_proc_status() -> None:
    status = Path("/proc/self/status").read_text()
    vm_rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    assert abs(rss_bytes() / 1024 - vm_rss) < 4096  # KiB: same figure, a moment apart


def test_watchdog_retires_only_above_the_limit_after_a_collection() -> None:
    readings = iter([50 * MIB, 150 * MIB, 90 * MIB, 150 * MIB, 120 * MIB])
    collected, exceeded = [], []
    dog = MemoryWatchdog(100, 1, exceeded.append, read_rss=lambda: next(readings),
                         collect=lambda: collected.append(1), logger=Quiet())
    assert dog.check() is False and collected == []  # below: nothing to do
    assert dog.check() is False and len(collected) == 1  # garbage only: the collection freed it
    assert dog.check() is True
    assert len(exceeded) == 1 and "120.0 MiB is above server.maxMemoryMB (100)" in exceeded[0]


def test_watchdog_run_checks_every_interval_and_stops_after_acting() -> None:
    readings = iter([10 * MIB, 10 * MIB, 10 * MIB, 200 * MIB, 200 * MIB])
    sleeps, exceeded = [], []
    dog = MemoryWatchdog(100, 2.5, exceeded.append, read_rss=lambda: next(readings),
                         sleep=sleeps.append, collect=lambda: None, logger=Quiet())
    dog.run()
    assert sleeps == [2.5, 2.5, 2.5] and len(exceeded) == 1


def test_watchdog_sleeps_with_the_time_sleep_of_when_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker builds it after gevent's monkeypatching: ``time.sleep`` must not be the
    blocking one captured when the master imported the module."""
    cooperative = []
    monkeypatch.setattr(time, "sleep", cooperative.append)
    MemoryWatchdog(100, 3, lambda reason: None).sleep(3)
    assert cooperative == [3]


# ------------------------------------------------------------------- handover


class FakeArbiter:
    """What the channel uses of gunicorn's Arbiter."""

    def __init__(self, workers: int) -> None:
        self.cfg = SimpleNamespace(workers=workers)
        self.num_workers = workers
        self.worker_age = 0
        self.WORKERS: dict[int, SimpleNamespace] = {}
        self.log = SimpleNamespace(info=lambda *a: None)
        self.wakeups = 0
        for _ in range(workers):
            self.spawn()

    def spawn(self) -> int:
        self.worker_age += 1
        pid = 1000 + self.worker_age
        self.WORKERS[pid] = SimpleNamespace(age=self.worker_age)
        return pid

    def wakeup(self) -> None:
        self.wakeups += 1


def channel(workers: int) -> tuple[HandoverChannel, FakeArbiter, list[int]]:
    arbiter = FakeArbiter(workers)
    killed: list[int] = []
    chan = HandoverChannel(arbiter, kill=lambda pid, sig: killed.append(pid) if sig == signal.SIGTERM else None)
    return chan, arbiter, killed


def test_sole_worker_stops_only_once_its_successor_accepts() -> None:
    chan, arbiter, killed = channel(1)
    (old,) = arbiter.WORKERS
    chan.handle(RETIRE, old)
    assert arbiter.num_workers == 2 and arbiter.wakeups == 1 and killed == []
    chan.handle(RETIRE, old)  # asked twice: still one successor
    assert arbiter.num_workers == 2
    new = arbiter.spawn()
    chan.handle(READY, new)
    assert killed == [old]
    del arbiter.WORKERS[old]
    chan.worker_exited(old)
    assert arbiter.num_workers == 1


def test_a_sibling_started_before_the_request_is_not_a_successor() -> None:
    chan, arbiter, killed = channel(2)
    first, second = arbiter.WORKERS
    chan.handle(RETIRE, first)
    chan.handle(READY, second)  # was already there: does not count
    assert killed == []
    chan.handle(READY, arbiter.spawn())
    assert killed == [first]


def test_successors_booting_out_of_order_each_replace_one_worker() -> None:
    chan, arbiter, killed = channel(2)
    first, second = arbiter.WORKERS
    chan.handle(RETIRE, first)
    early = arbiter.spawn()
    chan.handle(RETIRE, second)
    late = arbiter.spawn()
    chan.handle(READY, late)  # may stand for either: takes the later request
    chan.handle(READY, early)  # can only stand for the first
    assert sorted(killed) == sorted([first, second])


def test_only_the_masters_own_workers_are_signalled() -> None:
    chan, arbiter, killed = channel(1)
    chan.handle(RETIRE, 1)  # pid 1 is no worker of ours
    assert arbiter.num_workers == 1 and killed == []


def test_reload_forgets_pending_handovers_and_keeps_the_configured_count() -> None:
    chan, arbiter, killed = channel(1)
    (old,) = arbiter.WORKERS
    chan.handle(RETIRE, old)
    arbiter.num_workers = arbiter.cfg.workers  # what a reload does
    chan.reset()
    chan.worker_exited(old)
    assert arbiter.num_workers == 1
    chan.handle(READY, arbiter.spawn())
    assert killed == []


def test_channel_carries_messages_from_a_worker_to_the_master_thread() -> None:
    chan, arbiter, _ = channel(1)
    arbiter.WORKERS = {os.getpid(): SimpleNamespace(age=1)}
    chan.start()
    assert chan.send(RETIRE)
    deadline = time.monotonic() + 5
    while arbiter.num_workers != 2:
        assert time.monotonic() < deadline, "the master thread did not act"
        time.sleep(0.01)
    assert chan.leaving == {os.getpid()}


# ----------------------------------------------------------------- privileges


def test_explicit_keys_are_told_apart_from_defaults() -> None:
    settings = config.parse_settings({"user": "root", "server": {"workers": 3}})
    assert {"user", "server.workers"} <= settings.explicit
    assert "group" not in settings.explicit and "server.debug" not in settings.explicit


def test_root_is_kept_only_when_the_file_says_so() -> None:
    with pytest.raises(privileges.PrivilegeError, match="user: root"):
        privileges.worker_identity("root", None, user_explicit=False)
    with pytest.raises(privileges.PrivilegeError):
        privileges.worker_identity(0, None, user_explicit=False)
    assert privileges.worker_identity("root", None, user_explicit=True).uid == 0


def test_identity_defaults_to_the_users_primary_group() -> None:
    entry = pwd.getpwnam("nobody")
    identity = privileges.worker_identity("nobody", None, user_explicit=True)
    assert (identity.uid, identity.gid) == (entry.pw_uid, entry.pw_gid)
    assert set(identity.groups) == set(os.getgrouplist("nobody", entry.pw_gid))


def test_unknown_user_or_group_is_a_clear_error() -> None:
    with pytest.raises(privileges.PrivilegeError, match="'no-such-user-x' does not exist"):
        privileges.worker_identity("no-such-user-x", None, user_explicit=True)
    with pytest.raises(privileges.PrivilegeError, match="group: 'no-such-group-x'"):
        privileges.worker_identity("nobody", "no-such-group-x", user_explicit=True)


def test_required_paths_cover_python_the_project_and_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"server: {{accessLog: {tmp_path / 'logs' / 'access.log'}}}\n")
    paths = privileges.required_paths(config.load_settings(path))
    kinds = {what: [(p, mode) for w, p, mode in paths if w == what] for what, _, _ in paths}
    assert any(p.endswith("hashlib.py") for p, _ in kinds["the Python installation"])
    assert [Path(p).name for p, _ in kinds["cjs-proxy"]] == ["wsgi.py", "gevent_proxy.py"]
    assert kinds["the config file"] == [(str(path), os.R_OK)]
    assert kinds["the access log"] == [(str(tmp_path / "logs"), os.W_OK)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to take another identity")
def test_inaccessible_path_is_found_by_a_child_with_the_workers_identity() -> None:
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is private to root
    try:
        folder.chmod(0o755)
        (folder / "open.py").write_text("")
        secret = folder / "secret"
        secret.mkdir(mode=0o700)
        (secret / "file.py").write_text("")
        nobody = privileges.worker_identity("nobody", None, user_explicit=True)
        paths = [("open", str(folder / "open.py"), os.R_OK), ("hidden", str(secret / "file.py"), os.R_OK)]
        assert privileges.first_inaccessible(nobody, paths) == ("hidden", str(secret / "file.py"))
        assert privileges.first_inaccessible(nobody, paths[:1]) is None
    finally:
        shutil.rmtree(folder)


def test_embedded_store_and_dropped_workers_are_refused_together() -> None:
    settings = config.parse_settings({"user": "nobody", "driver": "embedded"})
    with pytest.raises(privileges.PrivilegeError, match="embedded store"):
        privileges.gunicorn_identity(settings)


def test_gunicorn_settings_map_the_lifecycle_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {maxRequests: 5000, maxRequestsJitter: 500, accessLog: null}\nuser: root\n")
    values = gunicorn_conf.gunicorn_settings({config.ENV_CONFIG: str(path)})
    assert (values["max_requests"], values["max_requests_jitter"]) == (5000, 500)
    for hook in ("on_starting", "post_fork", "child_exit", "on_reload", "on_exit"):
        assert callable(values[hook])
    if os.geteuid() == 0:
        assert (values["user"], values["group"]) == (0, 0)


# ------------------------------------------------------------ settings hand-over


def test_workers_get_the_settings_their_master_validated(tmp_path: Path) -> None:
    """The post_fork hook hands a worker the settings read with it, not the file as it is now."""
    path = tmp_path / "c.yaml"
    path.write_text("server: {workers: 3}\ndriver: [redis://a:1, redis://b:2]\nuser: root\n")
    values = gunicorn_conf.gunicorn_settings({config.ENV_CONFIG: str(path)})
    path.write_text("server:\n  workers: [broken\n")  # edited after the master read it
    worker = SimpleNamespace(settings=None)
    values["post_fork"](SimpleNamespace(), worker)
    assert worker.settings["server.workers"] == 3 and worker.settings.path == str(path)
    assert config.driver_urls(worker.settings) == ("redis://a:1", "redis://b:2")


def test_no_setting_travels_in_the_environment(tmp_path: Path) -> None:
    """gunicorn copies ``raw_env`` into the master's environment, which its children inherit."""
    path = tmp_path / "c.yaml"
    path.write_text("https: {passphrase: not-in-any-environment}\nuser: root\n")
    values = gunicorn_conf.gunicorn_settings({config.ENV_CONFIG: str(path)})
    assert values["raw_env"] == [f"{config.ENV_CONFIG}={path}"]


def test_the_hooks_are_what_gunicorn_accepts(tmp_path: Path) -> None:
    """gunicorn checks each hook's arity when it loads the config file."""
    from gunicorn.config import Config

    path = tmp_path / "c.yaml"
    path.write_text("user: root\n")
    values = gunicorn_conf.gunicorn_settings({config.ENV_CONFIG: str(path)})
    cfg = Config()
    for hook in ("on_starting", "post_fork", "child_exit", "on_reload", "on_exit"):
        cfg.set(hook, values[hook])
        assert getattr(cfg, hook) == values[hook]
