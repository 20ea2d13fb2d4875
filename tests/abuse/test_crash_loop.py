"""Issue 10, the crash loop: a hostile value that reaches a stand-in's hint store must never make
that peer unable to start.

Four real peers with data dirs (each key has 3 of them as replicas). One replica of a key is
frozen (SIGSTOP); a put through the peer that is not a replica makes it the stand-in (sloppy
quorum), which keeps a durable hint for the frozen owner. Hostile puts go through it (a value
nested 62 deep, a context with counter 2**64-1), then a well-behaved one; the stand-in leaves
gracefully and is started again on its data dir: it must serve, and once the owner is back
every acknowledged value must read back on three replicas.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

import gossipkv

from ..proc._peers import eventually, members
from ._attack import context_pairs, forged_context, nested
from ._cluster import Cluster, client_of
from ._invariants import Acked, assert_acked, assert_alive, local_read

pytestmark = [pytest.mark.abuse, pytest.mark.proc]

HOSTILE_DEPTH = 62
FORGED_COUNTER = 2**64 - 1
DOWN_WITHIN = 30.0  # seconds for the live peers to see the frozen one unreachable
KEY_CANDIDATES = 32  # keys tried to find one that the first (oldest) peer replicates


async def holders_of(cluster: Cluster, key: str) -> list[str]:
    out = []
    for name in cluster.names:
        got = await local_read(cluster.addr(name), key)
        if not isinstance(got, str) and got.found:
            out.append(name)
    return out


async def pick_key(cluster: Cluster, acked: Acked) -> tuple[str, list[str]]:
    """A key written to its 3 replicas whose replicas include the oldest peer (the leader), so
    the frozen owner and the stand-in are never the leader."""
    leader = cluster.names[0]
    async with client_of(cluster.addr(leader)) as c:
        for i in range(KEY_CANDIDATES):
            key = f"loop-{i}"
            await acked.put(c, key, f"before-{i}", w=3)
            holders = await holders_of(cluster, key)
            assert len(holders) == 3, (key, holders)
            if leader in holders:
                return key, holders
    raise AssertionError("no key replicated by the leader")


async def test_hostile_hint_never_makes_the_stand_in_fatal(cluster4: Cluster) -> None:
    cluster = cluster4
    acked = Acked()
    key, holders = await pick_key(cluster, acked)
    owner = next(n for n in reversed(holders) if n != cluster.names[0])
    (stand_in,) = [n for n in cluster.names if n not in holders]
    live = [n for n in cluster.names if n != owner]

    async with client_of(cluster.addr(stand_in)) as c:
        seen = await c.get(key)
    forged = forged_context([(a, FORGED_COUNTER) for a, _ in context_pairs(seen.context)])

    cluster.signal(owner, signal.SIGSTOP)
    try:

        async def owner_unreachable() -> Any:
            for name in live:
                doc = await members(cluster.addr(name))
                if doc is None:
                    return False
                row = next(m for m in doc["members"] if m["name"] == owner)
                if row["reachable"]:
                    return False
            return True

        await eventually(
            owner_unreachable, within=DOWN_WITHIN, what=f"{owner} unreachable", peers=cluster.peers
        )

        outcomes: dict[str, str] = {}
        async with client_of(cluster.addr(stand_in)) as c:
            await acked.put(c, key, "hinted", w=2)  # the stand-in keeps a hint for the owner
            try:
                await c.put(key, nested(HOSTILE_DEPTH))
                outcomes["deep"] = "ok"
            except gossipkv.GossipKVError as exc:
                outcomes["deep"] = f"{type(exc).__name__}: {exc}"
            try:
                await c.put(key, "forged", context=forged)
                outcomes["forged"] = "ok"
                for value in seen.values:
                    acked.forget(key, value)  # a context write replaced what it covered
                acked.add(key, "forged")
            except gossipkv.GossipKVError as exc:
                outcomes["forged"] = f"{type(exc).__name__}: {exc}"
            stats = await c.statistics()
        print(
            f"\n[abuse] crash loop: owner {owner} frozen, stand-in {stand_in}: {outcomes}; "
            f"hints stored {stats.hints_stored}, kv_errors {stats.kv_errors}"
        )

        # The stand-in leaves gracefully and starts again on its data dir: it must serve.
        code = await cluster.restart_gracefully_alone(stand_in)
        assert code == 0, f"{stand_in}: graceful leave exited with {code}"

        async def serving_or_dead() -> Any:
            if stand_in not in cluster.alive():
                return True
            doc = await members(cluster.addr(stand_in))
            return doc is not None and any(
                m["name"] == stand_in and m["status"] == "up" for m in doc["members"]
            )

        await eventually(
            serving_or_dead, within=30, what=f"{stand_in} serving again", peers=cluster.peers
        )
        assert_alive(cluster)
        async with client_of(cluster.addr(stand_in)) as c:
            await acked.put(c, key, "after", w=2)
    finally:
        cluster.signal(owner, signal.SIGCONT)

    await cluster.wait_ready()
    assert_alive(cluster)
    await assert_acked(cluster, acked, copies=3, within=30.0)
