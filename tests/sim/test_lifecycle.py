"""Membership that survives restarts (issue 11), on simulated clusters across seeds.

A simulated restart keeps the peer's persisted record and storage (its data dir): the peer comes
back as the same member, with the same age, so the leader and the partition table stay put and
nobody has to admit anybody, whatever the start order and the seed lists.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from gossipkv import ConfigError, GossipConfig, KVConfig, RemoteError, open_client
from gossipkv._partitions import PartitionTable
from gossipkv.testing import SimCluster, open_sim_cluster

from ._checks import all_up, describe, leaders, settle
from ._kvsim import find_key, kv_cluster, names, owners, service, table, tables_agree

SEEDS = [3, 4, 5]
KEEP = GossipConfig(remove_after=600.0)


@pytest.fixture(params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def lseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


def owners_of(c: SimCluster, name: str) -> tuple[tuple[str, ...], ...] | None:
    t = table(c.nodes[name])
    return None if t is None else t.owners


@pytest.mark.parametrize("seeding", ["none", "first", "everyone", "ring"])
async def test_a_whole_cluster_restart_serves_again_with_the_same_leader(
    lseed: int, seeding: str, autojump_clock: trio.testing.MockClock
) -> None:
    seed = lseed
    rng = random.Random(f"{seed}/{seeding}")
    async with kv_cluster(seed, n=5, config=KEEP) as c:
        with trio.fail_after(60):
            acked = {}
            for i in range(40):
                put = await c.nodes[names(5)[i % 5]].put(f"k{i}", i)
                acked[f"k{i}"] = put.values
        leader = c.nodes["n3"].leader()
        before = owners_of(c, "n3")
        generations = {n: c.nodes[n].generation for n in names(5)}
        for name in names(5):  # a power cut: everyone at once
            c.kill(name)
        await trio.sleep(5)
        order = names(5)
        rng.shuffle(order)
        seeds_for = {
            "none": lambda n: [],
            "first": lambda n: [] if n == order[0] else [order[0]],
            "everyone": lambda n: [m for m in names(5) if m != n],
            "ring": lambda n: [names(5)[(names(5).index(n) + 1) % 5]],
        }[seeding]
        restarted_at = trio.current_time()
        for name in order:
            await c.start(name, seeds=seeds_for(name))
            await trio.sleep(rng.uniform(0, 0.5))
        with trio.move_on_after(30):
            await c.wait_until(lambda: all_up(c, names(5)) and leaders(c) == {leader})
        assert all_up(c, names(5)) and leaders(c) == {leader}, (
            f"seed={seed} {seeding}: not back with leader {leader} (order {order})\n{describe(c)}"
        )
        with trio.fail_after(30):
            # Serving: every acknowledged write reads back through every peer.
            for key, values in acked.items():
                for name in names(5):
                    got = await c.nodes[name].get(key)
                    assert got.values == values, f"seed={seed} {seeding}: {key} via {name}"
        serving_after = trio.current_time() - restarted_at
        assert serving_after < 15, f"seed={seed} {seeding}: took {serving_after:.1f} s"
        for name in names(5):
            assert c.nodes[name].generation > generations[name], f"seed={seed}"
            assert owners_of(c, name) == before, (
                f"seed={seed} {seeding}: the table moved\n{describe(c)}"
            )


async def test_a_lone_restarted_founder_never_publishes_a_table_of_itself(
    lseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """The Jepsen finding: the founder restarted with no --seed while cut off bootstrapped a
    cluster of itself and published a table where it alone owned every partition."""
    seed = lseed
    async with kv_cluster(seed, n=3, config=KEEP) as c:
        before = owners_of(c, "n2")
        c.kill("n1")
        c.net.partition([c.address("n1")], [c.address("n2"), c.address("n3")])
        node = await c.start("n1", seeds=[])  # its original command line
        await trio.sleep(10)
        assert node.status == "up", f"seed={seed}: it resumes its membership, alone"
        assert owners_of(c, "n1") == before, f"seed={seed}: it re-planned alone"
        c.net.heal()
        with trio.fail_after(30):
            await c.wait_until(lambda: all_up(c, names(3)))
        await trio.sleep(5)
        for name in names(3):
            assert owners_of(c, name) == before, f"seed={seed}: the table moved\n{describe(c)}"


async def test_a_table_too_small_for_the_members_is_never_accepted(
    lseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = lseed
    async with kv_cluster(seed, n=3, config=KEEP) as c:
        g = c.nodes["n2"]._runtime().gossiper
        current = g.table()
        assert current is not None
        lone = PartitionTable(
            current.term + 5, 0, current.n, tuple(("n1",) for _ in range(current.q))
        )
        forged = g.decisions.to_plain()
        forged["table"] = lone.to_plain()
        forged["term"] = current.term + 5
        g._merge_decisions(forged)
        assert g.table() == current, f"seed={seed}: a one-owner table was accepted"


async def test_a_member_removed_while_away_rejoins_as_a_new_member(
    lseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = lseed
    quick = GossipConfig(remove_after=5.0)
    async with open_sim_cluster(4, seed=seed, config=quick) as c:
        await settle(c, names(4))
        old_up = {m.name: m.up_number for m in c.nodes["n1"].members()}["n4"]
        c.kill("n4")
        with trio.fail_after(30):
            await c.wait_until(
                lambda: all(
                    {m.name: m.status for m in c.nodes[n].members()}.get("n4") == "removed"
                    for n in names(3)
                )
            )
        node = await c.restart("n4", seeds=["n1"])
        with trio.fail_after(30):
            await c.wait_until(lambda: all_up(c, names(4)))
        ups = {m.name: m.up_number for m in c.nodes["n1"].members()}
        assert ups["n4"] is not None and old_up is not None and ups["n4"] > old_up, (
            f"seed={seed}: a removed member comes back as the youngest\n{describe(c)}"
        )
        assert node.leader() == "n1", f"seed={seed}"


async def test_requests_after_a_whole_cluster_restart_of_memory_peers_need_the_seeds(
    lseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A memory-only peer that restarts is a new member (it has no record to resume)."""
    seed = lseed
    async with kv_cluster(seed, n=3, config=KEEP, kv=KVConfig()) as c:
        c.kill("n3")
        c._stores.pop("n3")  # no data dir: nothing persisted
        node = await c.start("n3", seeds=["n1"])
        assert node.status == "joining", f"seed={seed}"
        with trio.fail_after(30):
            await c.wait_until(lambda: node.status == "up")
        assert service(node).node_id == "n3"


async def lacking(c: SimCluster, keys: list[str]) -> list[tuple[str, str]]:
    """``(key, owner)`` pairs where a current owner does not hold the key."""
    out = []
    for key in keys:
        t = table(next(iter(c.nodes.values())))
        assert t is not None
        from gossipkv._dvv import partition_of

        for owner in t.owners[partition_of(key, t.q)]:
            if owner in c.nodes and (await c.nodes[owner].get(key, local=True)).values != [key]:
                out.append((key, owner))
    return out


async def test_operator_removal_of_two_dead_members_of_three(
    lseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = lseed
    async with kv_cluster(seed, n=3, config=KEEP) as c:
        keys = [f"k{i}" for i in range(30)]
        with trio.fail_after(60):
            for key in keys:
                await c.nodes["n1"].put(key, key, w=3)
        c.kill("n2")
        c.kill("n3")
        survivor = c.nodes["n1"]
        with trio.fail_after(30):
            await c.wait_until(lambda: service(survivor)._reachable() == {"n1"})
            with pytest.raises(RemoteError, match="itself"):
                await survivor.remove("n1")
            with pytest.raises(RemoteError, match="no member named"):
                await survivor.remove("n9")
            first = await survivor.remove("n2")
            assert first["minority"] is True and first["leader"] == "n1", f"seed={seed}: {first}"
            await survivor.remove("n3")
            # The survivor alone holds every partition now, and serves reads and writes.
            await c.wait_until(lambda: owners_of(c, "n1") is not None)
            assert all(row == ("n1",) for row in owners_of(c, "n1") or ()), f"seed={seed}"
            for key in keys:
                assert (await survivor.get(key)).values == [key], f"seed={seed}: {key}"
            await survivor.put("after", "removal")
            # New members join and the partitions fill up to N copies again.
            for name in ("n4", "n5"):
                await c.start(name, seeds=["n1"])
            await c.wait_until(lambda: all_up(c, ["n1", "n4", "n5"]))
            await c.wait_until(
                lambda: (
                    tables_agree(c, ["n1", "n4", "n5"])
                    and all(service(n).transfers.filled() for n in c.nodes.values())
                )
            )
            missing = await lacking(c, keys)
            assert missing == [], f"seed={seed}: {missing[:5]}\n{describe(c)}"


async def test_removing_a_live_member_is_refused_and_changes_nothing(
    lseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = lseed
    async with kv_cluster(seed, n=3, config=KEEP) as c:
        before = owners_of(c, "n2")
        with trio.fail_after(30):
            for via in names(3):  # any peer forwards to the leader
                with pytest.raises(RemoteError, match="reachable and up"):
                    await c.nodes[via].remove("n3")
        await trio.sleep(2)
        assert all_up(c, names(3)) and owners_of(c, "n2") == before, f"seed={seed}"


async def test_a_forwarded_put_tries_the_next_owner_when_the_first_is_dead(
    lseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = lseed
    async with kv_cluster(seed, n=5, config=KEEP) as c:
        key = find_key(c, lambda o: "n5" not in o)
        first = owners(c, key)[0]
        c.pause(first)  # dead but not yet detected: requests to it go unanswered
        with trio.fail_after(30):
            put = await c.nodes["n5"].put(key, "v", w=2)
        assert put.values == ["v"], f"seed={seed}: {put}"
        assert first in service(c.nodes["n5"])._reachable(), "still believed alive"
        c.resume(first)


async def test_a_client_leaves_a_peer_that_cannot_reach_a_quorum(
    lseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = lseed
    async with kv_cluster(seed, n=3, config=KEEP) as c:
        with trio.fail_after(60):
            await c.nodes["n1"].put("k", "v", w=3)
            c.partition(["n1"], ["n2", "n3"])
            await c.wait_until(lambda: service(c.nodes["n1"])._reachable() == {"n1"})
            peers = [c.address("n1"), c.address("n2")]
            async with open_client(peers, transport=c.net.transport("client:1")) as client:
                got = await client.get("k")
                assert got.values == ["v"], f"seed={seed}: {got}"
                assert client.connected_to == c.address("n2"), f"seed={seed}"
                put = await client.put("k", "w", context=got.context)
                assert put.values == ["w"], f"seed={seed}: {put}"


async def test_a_replacement_takes_exactly_the_dead_members_partitions(
    lseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = lseed
    async with kv_cluster(seed, n=4, config=KEEP) as c:
        keys = [f"k{i}" for i in range(40)]
        with trio.fail_after(60):
            for key in keys:
                await c.nodes["n1"].put(key, key, w=3)
        before = owners_of(c, "n1")
        assert before is not None
        c.kill("n4")
        with trio.fail_after(30):
            await c.wait_until(
                lambda: all("n4" not in service(c.nodes[n])._reachable() for n in names(3))
            )
            for wrong, why in (("n9", "no member named"), ("n2", "reachable and up")):
                with pytest.raises(ConfigError, match=why):
                    await c.start("n6", seeds=["n2"], replace=wrong)
            await c.start("n5", seeds=["n2"], replace="n4")
            # The dead member's partitions, and only those, now belong to the replacement.
            expected = tuple(tuple("n5" if o == "n4" else o for o in row) for row in before)
            await c.wait_until(lambda: all(owners_of(c, n) == expected for n in c.nodes))
            # Reads are right while it fills (it is not up yet: reads go to the other owners).
            for key in keys[:10]:
                assert (await c.nodes["n1"].get(key)).values == [key], f"seed={seed}: {key}"
            await c.wait_until(lambda: all_up(c, ["n1", "n2", "n3", "n5"]))
        missing = [pair for pair in await lacking(c, keys) if pair[1] == "n5"]
        assert missing == [], f"seed={seed}: n5 serves without {missing[:5]}"
        assert owners_of(c, "n1") == expected, f"seed={seed}: a partition moved again"
        statuses = {m.name: m.status for m in c.nodes["n1"].members()}
        assert statuses.get("n4") == "removed" and statuses.get("n5") == "up", (
            f"seed={seed}: {statuses}"
        )
