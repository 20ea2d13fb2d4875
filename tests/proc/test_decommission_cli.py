"""Decommission through the CLI (issue 12), with real peers that have data dirs: when
``gossipkv leave`` returns, every key is on N owners and an R=2 read right after finds it, writes
the leaver acknowledged with W=1 included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import gossipkv

from ._peers import Peers, cli, eventually, free_ports

pytestmark = pytest.mark.proc

NAMES = ["d1", "d2", "d3", "d4", "d5"]


async def formed(peers: Peers) -> Any:
    """Every peer holds a table of all five, and nothing is under-replicated (a client may
    reach any of them: one peer with the table of a smaller cluster refuses W=2)."""
    try:
        for name in NAMES:
            async with gossipkv.open_client([peers.addr[name]]) as client:
                ring: Any = await client.ring()
                stats = await client.statistics()
            owners = ring.get("owners") or []
            if not owners or {m for row in owners for m in row} != set(NAMES):
                return None
            if any(len(row) < 3 for row in owners) or stats.under_replicated != 0:
                return None
    except (gossipkv.GossipKVError, ValueError):
        return None
    return True


async def test_leave_returns_with_every_key_on_n_owners(peers: Peers, tmp_path: Path) -> None:
    ports = free_ports(5)
    peers.start("d1", ports[0], data_dir=str(tmp_path / "d1"))
    for name, port in zip(NAMES[1:], ports[1:], strict=True):
        peers.start(name, port, seeds=["d1"], data_dir=str(tmp_path / name))
    await eventually(lambda: formed(peers), within=60, what="a table of 5", peers=peers)

    leaver = "d4"
    stayers = [n for n in NAMES if n != leaver]
    keys: dict[str, int] = {}
    async with gossipkv.open_client([peers.addr[n] for n in stayers]) as client:
        for i in range(300):
            await client.put(f"k{i}", i, w=2)
            keys[f"k{i}"] = i
    # W=1 through the leaver: acknowledged once the leaver alone has stored it.
    async with gossipkv.open_client([peers.addr[leaver]]) as client:
        for i in range(30):
            await client.put(f"solo{i}", -i, w=1)
            keys[f"solo{i}"] = -i

    out = cli("leave", "--peer", peers.addr[leaver], "--timeout", "60", timeout=90)
    assert out.returncode == 0, (out, peers.log(leaver))
    assert peers.procs[leaver].wait(timeout=20) == 0, peers.log(leaver)

    under: list[tuple[str, list[str]]] = []
    missing: list[str] = []
    async with gossipkv.open_client([peers.addr[n] for n in stayers]) as client:
        for key, value in keys.items():
            doc: Any = await client.owners(key)
            holders = [o["name"] for o in doc["owners"] if o["holds"]]
            if len(holders) < 3 or leaver in [o["name"] for o in doc["owners"]]:
                under.append((key, holders))
            got = await client.get(key, r=2)
            if got.values != [value]:
                missing.append(key)
    assert under == [], f"{len(under)} keys under N right after leave returned: {under[:5]}"
    assert missing == [], f"R=2 reads right after the leave missed {missing[:10]}"
