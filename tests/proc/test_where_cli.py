"""Where data lives, through the CLI (issue 12): ring, owners, transfers and repair, and their
bad input (one line, non-zero, nothing changed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import gossipkv

from ._peers import Peers, cli, eventually, free_ports

pytestmark = pytest.mark.proc

NAMES = ["w1", "w2", "w3"]


async def formed(peers: Peers) -> Any:
    try:
        async with gossipkv.open_client([peers.addr["w1"]]) as client:
            ring = await client.ring()
            await client.put("probe", 1, w=3)
    except (gossipkv.GossipKVError, ValueError):
        return None
    owners = ring.get("owners") or []
    return ring if owners and all(len(row) == 3 for row in owners) else None  # type: ignore[union-attr]


async def test_ring_owners_transfers_and_repair(peers: Peers, tmp_path: Path) -> None:
    ports = free_ports(3)
    peers.start("w1", ports[0])
    for name, port in zip(NAMES[1:], ports[1:], strict=True):
        peers.start(name, port, seeds=["w1"])
    await eventually(lambda: formed(peers), within=30, what="a table of 3", peers=peers)
    async with gossipkv.open_client([peers.addr["w1"]]) as client:
        await client.put("cart:1", ["apple"], w=3)
    addr = peers.addr["w1"]

    out = cli("ring", "--peer", addr, "--json")
    assert out.returncode == 0, out
    ring = json.loads(out.stdout)
    assert set(ring) >= {"epoch", "partitions", "replicas", "owners", "pulling"}
    assert ring["partitions"] == 64 and all(sorted(r) == NAMES for r in ring["owners"])
    assert "partition table epoch" in cli("ring", "--peer", addr).stdout

    out = cli("owners", "cart:1", "--peer", addr, "--json")
    assert out.returncode == 0, out
    doc = json.loads(out.stdout)
    assert sorted(o["name"] for o in doc["owners"]) == NAMES
    assert all(o["holds"] and o["siblings"] == 1 for o in doc["owners"]), doc
    assert "holds it, 1 siblings" in cli("owners", "cart:1", "--peer", addr).stdout

    out = cli("transfers", "--peer", addr, "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == [], out

    partition = doc["partition"]
    out = cli("repair", "--partition", str(partition), "--peer", addr)
    assert out.returncode == 0 and f"partition {partition:>4}: 0 keys repaired" in out.stdout, out
    out = cli("repair", "--peer", addr, "--json")
    assert out.returncode == 0, out
    assert len(json.loads(out.stdout)) == 64  # w1 owns every partition of a 3-peer cluster

    # A delete of a key with no live value reports not found and writes nothing.
    out = cli("delete", "never-written", "--peer", addr)
    assert out.returncode == 1 and "not found" in out.stderr, out
    got = json.loads(cli("get", "never-written", "--peer", addr, "--json").stdout)
    assert got["found"] is False and got["context"] == "", got  # no tombstone was written
    out = cli("delete", "cart:1", "--peer", addr, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["values"] == [], out

    for bad in (["repair", "--partition", "9999"], ["owners", ""], ["owners", "k" * 2000]):
        out = cli(*bad, "--peer", addr)
        assert out.returncode == 1, (bad, out)
        assert len(out.stderr.strip().splitlines()) == 1, (bad, out.stderr)
