"""Helpers for data-path tests on simulated clusters: start, route, inspect replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from gossipkv import GossipConfig, StorageLimits
from gossipkv._dvv import DVVSet, Sibling, partition_of, size
from gossipkv._kv import KeyValueService, decode_context
from gossipkv._node import Node
from gossipkv._partitions import PartitionTable
from gossipkv._replica_store import KVConfig
from gossipkv.testing import SimCluster, open_sim_cluster

from ._checks import describe, settle

Clock = DVVSet[Sibling]

# Removal is far beyond every scenario: a down owner stays in the table (hints, not moves).
KEEP_MEMBERS = GossipConfig(remove_after=600.0)


def names(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


def service(node: Node) -> KeyValueService:
    return node._service()


def table(node: Node) -> PartitionTable | None:
    return node._runtime().gossiper.table()


def reachable(c: SimCluster, at: str) -> set[str]:
    return node_reachable(c.nodes[at])


def node_reachable(node: Node) -> set[str]:
    return node._runtime().gossiper.reachable_members()


def tables_agree(c: SimCluster, members: list[str]) -> bool:
    """Every running node holds the same table, and it spreads over exactly ``members``."""
    tables = [table(n) for n in c.nodes.values()]
    first = tables[0]
    if first is None or any(t is None or t.owners != first.owners for t in tables):
        return False
    return {m for row in first.owners for m in row} == set(members)


@asynccontextmanager
async def kv_cluster(
    seed: int,
    n: int = 5,
    *,
    kv: KVConfig | None = None,
    config: GossipConfig | None = None,
    latency: float = 0.001,
    storage_limits: StorageLimits | None = None,
) -> AsyncIterator[SimCluster]:
    """``n`` peers ``n1..nN`` (joined through n1), settled, all holding the same partition table."""
    async with open_sim_cluster(0, seed=seed, config=config or KEEP_MEMBERS, latency=latency) as c:
        for name in names(n):
            await c.start(
                name,
                seeds=[] if name == "n1" else ["n1"],
                kv=kv,
                storage_limits=storage_limits,
            )
        await settle(c, names(n), within=30)
        with trio.fail_after(30):
            await c.wait_until(lambda: tables_agree(c, names(n)))
            # Settled includes the partitions each member gained as the others joined.
            await c.wait_until(lambda: all(service(m).transfers.filled() for m in c.nodes.values()))
        yield c


def owners(c: SimCluster, key: str) -> list[str]:
    t = table(next(iter(c.nodes.values())))
    assert t is not None
    return list(t.owners[partition_of(key, t.q)])


def find_key(c: SimCluster, ok: Callable[[list[str]], bool], prefix: str = "k") -> str:
    """The first key ``prefix0, prefix1, ...`` whose owner list satisfies ``ok``."""
    for i in range(10_000):
        key = f"{prefix}{i}"
        if ok(owners(c, key)):
            return key
    raise AssertionError("no key with the wanted owners")


async def stored(c: SimCluster, name: str, key: str) -> Clock | None:
    """What peer ``name``'s disk holds for ``key`` (works while it is down, too)."""
    return await c.storage[name].get(key)


def dots(clock: Clock | None) -> int:
    """Events the clock has seen (the sum of its counters)."""
    return 0 if clock is None else sum(e.counter for e in clock.entries)


def live(clock: Clock | None) -> list[object]:
    if clock is None:
        return []
    out: list[object] = [s.data for s in clock.anonymous if not s.tombstone]
    for e in clock.entries:
        out.extend(s.data for s in e.values if not s.tombstone)
    return out


def tombstones(clock: Clock | None) -> int:
    if clock is None:
        return 0
    return sum(1 for e in clock.entries for s in e.values if s.tombstone) + sum(
        1 for s in clock.anonymous if s.tombstone
    )


def ctx(raw: bytes) -> dict[str, int]:
    return decode_context(raw) or {}


def covers(big: dict[str, int], small: dict[str, int]) -> bool:
    """``big`` has seen every event ``small`` has."""
    return all(big.get(a, 0) >= n for a, n in small.items())


async def replicas_equal(c: SimCluster, key: str, among: list[str]) -> bool:
    """Every listed replica holds the same clock (same history, same values)."""
    clocks = [await stored(c, m, key) for m in among]
    if any(x is None for x in clocks):
        return False
    first = clocks[0]
    return all(x == first for x in clocks)


async def wait_replicas_equal(
    c: SimCluster, key: str, among: list[str], *, within: float, seed: int
) -> Clock:
    with trio.move_on_after(within):
        while not await replicas_equal(c, key, among):  # noqa: ASYNC110 - simulated time
            await trio.sleep(0.05)
    clocks = {m: await stored(c, m, key) for m in among}
    assert await replicas_equal(c, key, among), (
        f"seed={seed}: replicas of {key!r} differ after {within}s: {clocks}\n{describe(c)}"
    )
    clock = clocks[among[0]]
    assert clock is not None
    return clock


async def wait_unreachable(
    c: SimCluster, who: list[str], gone: list[str], *, within: float = 15.0
) -> None:
    """Wait until every peer in ``who`` considers every peer in ``gone`` unreachable."""
    with trio.fail_after(within):
        await c.wait_until(lambda: all(not (reachable(c, w) & set(gone)) for w in who))


def values_of(clock: Clock | None) -> int:
    return 0 if clock is None else size(clock)
