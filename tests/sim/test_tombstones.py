"""Tombstones that go away (issue 12 §5), on simulated clusters under an autojump MockClock:
reaped once every owner holds them and ``tombstone_grace`` passed, never while an owner is away,
and no resurrection from a replica that was down across the grace, nor from an old hint.
Every duration is simulated seconds; every assertion names its seed."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import GossipConfig, GossipKVError, KVConfig, Node, Unavailable
from gossipkv.testing import SimCluster

from ._checks import describe
from ._kvsim import (
    find_key,
    kv_cluster,
    names,
    owners,
    service,
    stored,
    tombstones,
    wait_replicas_equal,
    wait_unreachable,
)

TOMB_SEEDS = [41, 42, 43]
GRACE = 40.0
KV = KVConfig(tombstone_grace=GRACE)


@pytest.fixture(params=TOMB_SEEDS, ids=[f"seed{s}" for s in TOMB_SEEDS])
def tseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


async def _write_and_delete(c: SimCluster, keys: list[str], *, via: str = "n1") -> None:
    node = c.nodes[via]
    for key in keys:
        await node.put(key, f"value-of-{key}", w=3)
    for key in keys:
        got = await node.get(key, r=3)
        await node.delete(key, context=got.context, w=2)


async def _held_by(c: SimCluster, key: str) -> list[str]:
    """The peers whose storage holds any record of ``key``."""
    return [m for m in sorted(c.storage) if await stored(c, m, key) is not None]


def _reaped(c: SimCluster) -> int:
    return sum(n.statistics().tombstones_reaped for n in c.nodes.values())


async def test_reaped_after_the_grace_once_every_owner_holds_it(
    tseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = tseed
    async with kv_cluster(seed, n=5, kv=KV) as c:
        deleted = [f"gone{i}" for i in range(12)]
        kept = [f"kept{i}" for i in range(6)]
        with trio.fail_after(60):
            await _write_and_delete(c, deleted)
            for key in kept:
                await c.nodes["n2"].put(key, key, w=3)
            for key in deleted:
                clock = await wait_replicas_equal(c, key, owners(c, key), within=30, seed=seed)
                assert tombstones(clock) == 1, f"seed={seed}: {key} {clock}"
        keys_before = {m: c.storage[m].statistics().keys for m in c.storage}
        # Before the grace nothing goes, although every owner holds the tombstone.
        await trio.sleep(GRACE / 2)
        for key in deleted:
            assert await _held_by(c, key) == sorted(owners(c, key)), f"seed={seed}: {key}"
        assert _reaped(c) == 0, f"seed={seed}"
        with trio.fail_after(GRACE * 2):
            while any([await _held_by(c, key) for key in deleted]):  # noqa: ASYNC110 - sim time
                await trio.sleep(1.0)
        assert _reaped(c) == len(deleted) * 3, f"seed={seed}: {_reaped(c)}\n{describe(c)}"
        for m in c.storage:
            freed = keys_before[m] - c.storage[m].statistics().keys
            assert freed == sum(m in owners(c, k) for k in deleted), f"seed={seed}: {m}"
            assert c.storage[m].statistics().deletes == freed, f"seed={seed}: {m}"
        stats = c.nodes["n1"].statistics()
        assert stats.tombstone_grace == GRACE and stats.tombstones_pending == 0, f"seed={seed}"
        with trio.fail_after(30):
            for key in deleted:
                got = await c.nodes["n3"].get(key, r=3)
                assert not got.found, f"seed={seed}: {key} came back: {got}"
            for key in kept:
                assert (await c.nodes["n4"].get(key, r=3)).values == [key], f"seed={seed}"


async def test_not_reaped_while_an_owner_is_down(
    tseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = tseed
    # The down owner is never removed: it stays an owner, and the tombstone stays everywhere.
    async with kv_cluster(seed, n=5, kv=KV, config=GossipConfig(remove_after=3600.0)) as c:
        # The owner that goes down is not the key's first owner: the first owner is the one
        # that tries to reap (and is blocked).
        key = find_key(c, lambda o: "n1" not in o)
        down = owners(c, key)[-1]
        with trio.fail_after(60):
            await _write_and_delete(c, [key])
            await wait_replicas_equal(c, key, owners(c, key), within=30, seed=seed)
        c.kill(down)
        await wait_unreachable(c, [m for m in names(5) if m != down], [down])
        await trio.sleep(GRACE * 4)
        held = await _held_by(c, key)
        assert held == sorted(owners(c, key)), f"seed={seed}: {held}\n{describe(c)}"
        assert _reaped(c) == 0, f"seed={seed}"
        blocked = sum(service(n).reaper.counters.blocked for n in c.nodes.values())
        assert blocked > 0, f"seed={seed}"
        # Back again: now every owner holds it, and it goes.
        with trio.fail_after(120):
            await c.restart(down, seeds=["n1"])
            while await _held_by(c, key):  # noqa: ASYNC110 - simulated time
                await trio.sleep(1.0)
        got = await c.nodes["n1"].get(key, r=3)
        assert not got.found, f"seed={seed}: {got}"


async def test_a_key_written_again_after_its_reap_keeps_the_new_write(
    tseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = tseed
    async with kv_cluster(seed, n=5, kv=KV) as c:
        key = find_key(c, lambda o: o[0] == "n1")
        with trio.fail_after(60):
            await _write_and_delete(c, [key])
            old = await wait_replicas_equal(c, key, owners(c, key), within=30, seed=seed)
        with trio.fail_after(GRACE * 3):
            while await _held_by(c, key):  # noqa: ASYNC110 - simulated time
                await trio.sleep(1.0)
        # Written again through the same coordinator: a fresh actor, no old dot reused.
        await c.nodes["n1"].put(key, "reborn", w=3)
        new = await stored(c, "n1", key)
        assert new is not None
        assert not {e.actor for e in new.entries} & {e.actor for e in old.entries}, (
            f"seed={seed}: {new} reuses an actor of {old}"
        )
        # A lingering copy of the old tombstone (a replica that missed the reap) arrives late.
        for member in owners(c, key):
            await service(c.nodes[member]).apply(key, old)
        with trio.fail_after(30):
            for member in owners(c, key):
                got = await c.nodes[member].get(key, local=True)
                assert got.values == ["reborn"], f"seed={seed}: {member} {got}"
            assert (await c.nodes["n2"].get(key, r=3)).values == ["reborn"], f"seed={seed}"


async def _plant_stale_copy(c: SimCluster, member: str, key: str) -> None:
    """``member`` holds an old live value of ``key`` it never saw deleted (a stand-in's copy)."""
    donor = owners(c, key)[0]
    clock = await stored(c, donor, key)
    assert clock is not None
    await service(c.nodes[member]).apply(key, clock)


async def _reap_behind(c: SimCluster, seed: int, away: str) -> str:
    """Write a key ``away`` does not own, give ``away`` a live copy, stop ``away``, delete the key
    and wait until its owners reaped the tombstone. Returns the key."""
    key = find_key(c, lambda o: away not in o)
    with trio.fail_after(60):
        await c.nodes[owners(c, key)[0]].put(key, "stale", w=3)
        await _plant_stale_copy(c, away, key)
    c.kill(away)
    rest = list(c.nodes)
    await wait_unreachable(c, rest, [away])
    with trio.fail_after(60):
        got = await c.nodes[rest[0]].get(key, r=3)
        await c.nodes[rest[0]].delete(key, context=got.context, w=3)
    with trio.fail_after(GRACE * 4):
        while [m for m in await _held_by(c, key) if m != away]:  # noqa: ASYNC110 - sim time
            await trio.sleep(1.0)
    assert await stored(c, away, key) is not None, f"seed={seed}: the stale copy is planted"
    return key


async def _wait_serving(node: Node, key: str) -> None:
    """Until ``node``'s own replica answers a read (``Unavailable`` while it checks its data)."""
    while True:
        try:
            await node.get(key, local=True)
            return
        except Unavailable:
            await trio.sleep(0.05)


async def _never_found(c: SimCluster, key: str, seed: int, *, watch: float) -> None:
    """Reads at R=N on every member find nothing for ``watch`` seconds, and no replica stores
    a live value."""
    end = trio.current_time() + watch
    while trio.current_time() < end:
        for name, node in list(c.nodes.items()):
            try:
                got = await node.get(key, r=3)
            except GossipKVError:  # a member still checking its data refuses reads
                continue
            assert not got.found, f"seed={seed}: {key} came back at {name}: {got}\n{describe(c)}"
        await trio.sleep(2.0)
    for name in c.nodes:
        got = await c.nodes[name].get(key, local=True)
        assert not got.found, f"seed={seed}: {name} stores {key}: {got}"


async def test_a_member_down_across_the_grace_does_not_resurrect_a_reaped_key(
    tseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = tseed
    async with kv_cluster(seed, n=5, kv=KV, config=GossipConfig(remove_after=3600.0)) as c:
        key = await _reap_behind(c, seed, "n5")
        with trio.fail_after(60):
            await c.restart("n5", seeds=["n1"], kv=KV)
            await c.wait_until(lambda: c.nodes["n5"].statistics().replica_wiped > 0)
        await _never_found(c, key, seed, watch=GRACE)
        assert await stored(c, "n5", key) is None, f"seed={seed}"


async def test_a_member_removed_across_the_grace_does_not_resurrect_a_reaped_key(
    tseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = tseed
    async with kv_cluster(seed, n=5, kv=KV, config=GossipConfig(remove_after=20.0)) as c:
        key = await _reap_behind(c, seed, "n5")
        with trio.fail_after(120):
            await c.restart("n5", seeds=["n1"], kv=KV)
            await c.wait_until(lambda: c.nodes["n5"].statistics().replica_wiped > 0)
        await _never_found(c, key, seed, watch=GRACE)


async def test_without_the_check_the_stale_copy_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Control: a returning member that keeps every tombstone (so never checks its data) hands
    its stale copy to the owners, and the deleted value is visible again: the tests above can
    see a resurrection."""
    seed = TOMB_SEEDS[0]
    async with kv_cluster(seed, n=5, kv=KV, config=GossipConfig(remove_after=3600.0)) as c:
        key = await _reap_behind(c, seed, "n5")
        await c.restart("n5", seeds=["n1"], kv=KVConfig(tombstone_grace=float("inf")))
        with trio.fail_after(120):
            while not (await c.nodes["n1"].get(key, r=3)).found:  # noqa: ASYNC110 - sim time
                await trio.sleep(1.0)


async def test_a_hint_older_than_the_grace_is_dropped(
    tseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = tseed
    async with kv_cluster(seed, n=5, kv=KV, config=GossipConfig(remove_after=3600.0)) as c:
        key = find_key(c, lambda o: "n5" in o and "n1" not in o)
        c.kill("n5")
        await wait_unreachable(c, names(4), ["n5"])
        with trio.fail_after(30):
            await c.nodes["n1"].put(key, "while-n5-was-away", w=3)
        holders = [m for m in names(4) if service(c.nodes[m]).hints_pending]
        assert len(holders) == 1, f"seed={seed}: {holders}"
        stand_in = holders[0]
        await trio.sleep(GRACE + 10)
        kv = service(c.nodes[stand_in])
        assert kv.counters.hints_expired == 1 and kv.hints_pending == 0, f"seed={seed}"
        assert await c.hints[stand_in].keys(0, 1) == [], f"seed={seed}"
        # Its own copy (the stand-in write itself) is gone too: nothing old to hand over.
        assert await stored(c, stand_in, key) is None, f"seed={seed}"
        with trio.fail_after(60):
            await c.restart("n5", seeds=["n1"], kv=KV)
            # Away longer than the grace: it checks its data with the cluster first, and its
            # data path answers Unavailable meanwhile.
            await _wait_serving(c.nodes["n5"], key)
            await c.wait_until(lambda: "n5" in service(c.nodes["n1"])._reachable())
        assert kv.counters.hints_delivered == 0, f"seed={seed}"
        # Nothing was reaped meanwhile: n5 keeps its replica, and gets the value from the owners.
        assert c.nodes["n5"].statistics().replica_wiped == 0, f"seed={seed}"
        with trio.fail_after(60):
            assert (await c.nodes["n2"].get(key, r=3)).values == ["while-n5-was-away"]
