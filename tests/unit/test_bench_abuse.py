"""bench/abuse.py's ``--attack-address``: every attacker's socket comes from it, the normal
client's from 127.0.0.1, and the results say which. Sockets to a listener in this
process only; the benchmark itself is never run here."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import abuse


def peers_of(kinds: list[str], address: str) -> list[str]:
    """The source address the listener sees for each kind of attacker's connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        attack = abuse.Attack(listener.getsockname()[1], address)

        async def open_all() -> None:
            for kind in kinds:
                _, writer = await attack._open(kind)
                writer.close()

        asyncio.run(open_all())
        peers = []
        for _ in kinds:
            conn, peer = listener.accept()
            conn.close()
            peers.append(peer[0])
        return peers


def test_attackers_connect_from_the_attack_address():
    assert peers_of(["slowloris", "non-reader"], "127.0.0.2") == ["127.0.0.2", "127.0.0.2"]


def test_by_default_everyone_is_on_127_0_0_1():
    assert peers_of(["slow-post", "non-reader"], abuse.NORMAL_ADDRESS) == ["127.0.0.1", "127.0.0.1"]


def report_of(attack_cpu: int | None) -> str:
    phase = abuse.Phase("x", waits=[0.001], latencies=[0.001]).summary()
    result = {"before": phase, "during": phase, "rss_mib": {"before": 1, "peak": 2, "after": 1},
              "attackers_cut_and_back": {}, "worker_alive": True, "load_before": "0.1",
              "addresses": {"attackers": "127.0.0.2", "normal client": "127.0.0.1"}, "attack_cpu": attack_cpu}
    opts = argparse.Namespace(rev=None, before=1.0, during=1.0, settle=1.0)
    return abuse.report(result, opts, "stamp")


def test_the_results_name_both_addresses():
    text = report_of(None)
    assert "attackers from 127.0.0.2, the normal client from 127.0.0.1." in text
    assert "p99 during / before: 1.0x." in text
    assert "CPUs: shared by everything." in text


def test_the_results_say_where_the_attack_ran():
    assert "CPUs: the attack process on CPU 1 alone, the proxy's worker on the others" in report_of(1)
