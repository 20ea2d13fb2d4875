"""``gossipkv snapshot`` against a real peer process: a consistent hard-linked copy of its log
engine that, put back in place of the data dir's, brings back exactly what was acknowledged
before the snapshot, siblings and clocks included."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import trio

import gossipkv

from ._peers import Peers, cli, eventually, free_ports, loads

pytestmark = pytest.mark.proc


async def test_snapshot_then_restore_brings_back_siblings_and_deleted_keys(
    peers: Peers, tmp_path: Path
) -> None:
    data = tmp_path / "p1"
    (port,) = free_ports(1)
    peers.start("p1", port, data_dir=str(data))
    addr = peers.addr["p1"]

    async def writable() -> bool:
        try:
            async with gossipkv.open_client([addr], request_timeout=2.0) as client:
                await client.put("probe", 1)
        except gossipkv.GossipKVError:
            return False
        return True

    await eventually(writable, within=30, what="p1 takes writes", peers=peers)
    async with gossipkv.open_client([addr]) as client:
        await client.put("k", "a")
        await client.put("k", "b")  # blind: a second sibling
        for i in range(20):
            await client.put(f"x{i}", i)
        before = await client.get("k")
    assert sorted(before.values) == ["a", "b"]  # type: ignore[type-var]

    made = cli("snapshot", "before", "--peer", addr, "--json")
    assert made.returncode == 0, made.stderr
    doc = loads(made.stdout)
    assert doc["tag"] == "before" and doc["keys"] == 22 and doc["files"] >= 1
    assert Path(doc["path"]) == data / "snapshots" / "before"
    # A taken tag and a bad one: one line each, nothing changes.
    for args, reason in [(["before"], "exists already"), (["../up"], "snapshot tag")]:
        again = cli("snapshot", *args, "--peer", addr)
        assert again.returncode != 0 and reason in again.stderr, again.stderr
        assert len(again.stderr.strip().splitlines()) == 1, again.stderr

    # After the snapshot: the siblings are resolved and half the keys deleted.
    async with gossipkv.open_client([addr]) as client:
        await client.put("k", "resolved", context=before.context)
        for i in range(10):
            await client.delete(f"x{i}")
        assert (await client.get("k")).values == ["resolved"]

    # Restore as an operator would: stop the peer, put the snapshot in place, start it.
    peers.signal("p1", signal.SIGTERM)  # it leaves (the only member), then exits
    await trio.to_thread.run_sync(lambda: peers.procs["p1"].wait(timeout=30))
    for part in ("data", "hints"):
        shutil.move(data / part, tmp_path / f"{part}.old")
        shutil.copytree(data / "snapshots" / "before" / part, data / part)
    peers.start("p1", port, data_dir=str(data))
    await eventually(writable, within=30, what="p1 back from the snapshot", peers=peers)
    async with gossipkv.open_client([addr]) as client:
        k = await client.get("k")
        assert sorted(k.values) == ["a", "b"]  # type: ignore[type-var]
        assert k.context == before.context  # the same clock, not just the same values
        for i in range(20):
            assert (await client.get(f"x{i}")).values == [i], i
    # It had left (SIGTERM) as the only member and knows no one: it started a cluster again.
    assert "knows no member to rejoin through" in peers.log("p1")
