"""The data path through real peer processes and the CLI: JSON shapes, SIGSTOP + read repair,
SIGKILL of every peer and restart on the same data dirs without losing acknowledged writes."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import gossipkv

from ._peers import Peers, cli, eventually, free_ports, loads, members

pytestmark = pytest.mark.proc

NAMES = ["n1", "n2", "n3"]
PUT_KEYS = {"key", "values", "context", "more"}
GET_KEYS = {"key", "found", "values", "context", "more"}


def start_all(peers: Peers, tmp_path: Path, ports: list[int], **opts: str) -> None:
    """n1 first (without --seed on a fresh start and on a restart), then n2, n3 seeding it."""
    peers.start("n1", ports[0], data_dir=str(tmp_path / "n1"), **opts)
    for name, port in zip(NAMES[1:], ports[1:], strict=True):
        peers.start(name, port, seeds=["n1"], data_dir=str(tmp_path / name), **opts)


async def wait_ready(peers: Peers) -> None:
    """Every peer lists all three as up, and a quorum read answers (a partition table exists)."""

    async def all_up() -> Any:
        docs = [await members(peers.addr[n]) for n in NAMES]
        return all(
            d is not None
            and sorted(m["name"] for m in d["members"] if m["status"] == "up") == NAMES
            for d in docs
        )

    await eventually(all_up, within=30, what="3 peers up", peers=peers)

    async def reads() -> Any:
        return all(
            kv("get", "probe", "--r", "3", "--peer", peers.addr[n]).returncode == 0 for n in NAMES
        )

    await eventually(reads, within=30, what="quorum reads answer on every peer", peers=peers)


async def read(addr: str, key: str, *, r: int = 0, local: bool = False) -> list[Any] | None:
    """The values of ``key`` read through ``addr`` by the client (``None``: the read failed)."""
    try:
        async with gossipkv.open_client([addr], request_timeout=5.0) as client:
            return list((await client.get(key, r=r, local=local)).values)
    except gossipkv.GossipKVError:
        return None


def kv(*args: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, "--json", timeout=30)


def doc_of(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, f"rc={out.returncode}\nstdout={out.stdout}\nstderr={out.stderr}"
    return loads(out.stdout)


async def test_put_get_round_trip_json(peers: Peers, tmp_path: Path) -> None:
    ports = free_ports(3)
    start_all(peers, tmp_path, ports, tombstone_grace="2")
    await wait_ready(peers)

    put = doc_of(kv("put", "greeting", "hello", "--peer", peers.addr["n1"]))
    assert set(put) == PUT_KEYS, put
    assert put["key"] == "greeting" and put["values"] == ["hello"], put
    bytes.fromhex(put["context"])  # hex, opaque

    for name in NAMES:
        got = doc_of(kv("get", "greeting", "--peer", peers.addr[name]))
        assert set(got) == GET_KEYS, got
        assert got == {**put, "found": True}, (name, got, put)

    # Two blind writes are siblings; writing back with the read's context resolves them.
    doc_of(kv("put", "greeting", "bonjour", "--peer", peers.addr["n2"]))
    both = doc_of(kv("get", "greeting", "--peer", peers.addr["n3"]))
    assert sorted(both["values"]) == ["bonjour", "hello"], both
    one = doc_of(
        kv("put", "greeting", "hi", "--context", both["context"], "--peer", peers.addr["n3"])
    )
    assert one["values"] == ["hi"], one
    got = doc_of(kv("get", "greeting", "--peer", peers.addr["n1"]))
    assert got["values"] == ["hi"] and got["context"] == one["context"], got

    missing = doc_of(kv("get", "nothing-here", "--peer", peers.addr["n2"]))
    assert missing == {
        "key": "nothing-here",
        "found": False,
        "values": [],
        "context": "",
        "more": 0,
    }

    bad = cli("put", "greeting", "x", "--context", "zz", "--peer", peers.addr["n1"])
    assert bad.returncode != 0 and "hex" in (bad.stdout + bad.stderr), bad

    # Deleted, then reaped by all three owners once the 2 s grace has passed.
    assert cli("delete", "greeting", "--peer", peers.addr["n2"]).returncode == 0
    status = doc_of(cli("status", "--json", "--peer", peers.addr["n1"], timeout=30))
    assert status["tombstone_grace"] == 2.0, status

    async def reaped() -> Any:
        docs = [loads(cli("stats", "--json", "--peer", peers.addr[n]).stdout) for n in NAMES]
        return sum(d["tombstones_reaped"] for d in docs) == 3

    await eventually(reaped, within=30, what="the tombstone reaped on 3 owners", peers=peers)
    assert doc_of(kv("get", "greeting", "--r", "3", "--peer", peers.addr["n3"]))["found"] is False


async def test_sigstop_read_repair_then_kill_all_and_restart(peers: Peers, tmp_path: Path) -> None:
    ports = free_ports(3)
    start_all(peers, tmp_path, ports)
    await wait_ready(peers)

    acked: dict[str, str] = {}
    for i in range(5):
        doc = doc_of(kv("put", f"before-{i}", f"b{i}", "--w", "3", "--peer", peers.addr["n1"]))
        acked[f"before-{i}"] = f"b{i}"
        assert doc["values"] == [f"b{i}"], doc

    # n3 frozen: W=2 writes still succeed on n1 and n2.
    peers.signal("n3", signal.SIGSTOP)
    try:
        for i in range(5):
            doc = doc_of(kv("put", f"during-{i}", f"d{i}", "--w", "2", "--peer", peers.addr["n1"]))
            assert doc["values"] == [f"d{i}"], doc
            acked[f"during-{i}"] = f"d{i}"
    finally:
        peers.signal("n3", signal.SIGCONT)

    # A quorum read through n1 (the CLI once, then the client) repairs n3, which then shows the
    # value in its own replica.
    doc_of(kv("get", "during-0", "--r", "3", "--peer", peers.addr["n1"]))

    async def repaired() -> Any:
        ok = True
        for key, value in acked.items():
            if not key.startswith("during-"):
                continue
            await read(peers.addr["n1"], key, r=3)
            ok = ok and (await read(peers.addr["n3"], key, local=True)) == [value]
        return ok

    await eventually(repaired, within=30, what="n3 repaired by quorum reads", peers=peers)

    # SIGKILL every peer, restart all on the same data dirs: no acknowledged write is lost.
    for name in NAMES:
        peers.signal(name, signal.SIGKILL)
    for name in NAMES:
        peers.procs[name].wait(timeout=10)
    start_all(peers, tmp_path, ports)
    await wait_ready(peers)

    async def all_there() -> Any:
        missing = {}
        for key, value in acked.items():
            got = await read(peers.addr["n2"], key)
            if got != [value]:
                missing[key] = got
        return not missing or None

    await eventually(
        all_there, within=30, what="every acknowledged write after restart", peers=peers
    )
    assert doc_of(kv("get", "before-0", "--peer", peers.addr["n3"]))["values"] == ["b0"]
    for name in NAMES:
        for key, value in acked.items():
            local = await read(peers.addr[name], key, local=True)
            assert local == [value], (name, key, local)
