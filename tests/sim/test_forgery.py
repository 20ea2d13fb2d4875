"""Gossip that can't be bent beyond repair (issue 13 §3): forged leader decisions, tables and
generations are refused and counted, and leave every honest peer's decisions as they were.

Each forgery is handed to honest peers as if gossip had brought it (``_merge_decisions``,
``apply_delta``): what a hostile member could send. Simulated 5-peer clusters under an autojump
MockClock, across seeds.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from gossipkv import GossipConfig
from gossipkv._dvv import partition_of
from gossipkv._messages import NodeDelta, Shutdown, VersionedEntry
from gossipkv._partitions import PartitionTable
from gossipkv.membership._leader import MAX_EPOCH_STEP
from gossipkv.testing import SimCluster, open_sim_cluster

from ._checks import all_up, describe, leaders, settle

FIVE = ["n1", "n2", "n3", "n4", "n5"]
KEEP = GossipConfig(remove_after=600.0)
NEAR_LIMIT = 2**62 - 1


def decisions(c: SimCluster) -> dict[str, Any]:
    return {n: node._runtime().gossiper.decisions.to_plain() for n, node in c.nodes.items()}


async def formed(c: SimCluster, members: list[str]) -> None:
    """Wait until every peer holds the same decisions, with a table spanning ``members``."""
    await settle(c, members)

    def same() -> bool:
        records = list(decisions(c).values())
        table = records[0]["table"]
        spans = table is not None and {m for row in table[3] for m in row} == set(members)
        return spans and all(r == records[0] for r in records)

    with trio.fail_after(60):
        await c.wait_until(same)


def table_of(c: SimCluster) -> PartitionTable:
    table = c.nodes["n1"]._runtime().gossiper.table()
    assert table is not None
    return table


def refused(c: SimCluster, reason: str) -> int:
    return sum(
        node._runtime().gossiper.counters.refused.get(reason, 0) for node in c.nodes.values()
    )


def forge(c: SimCluster, change: Any) -> dict[str, Any]:
    """n1's decisions with ``change`` applied, handed to every peer as if gossiped."""
    record = c.nodes["n1"]._runtime().gossiper.decisions.to_plain()
    change(record)
    for node in c.nodes.values():
        node._runtime().gossiper._merge_decisions(record)
    return record


async def test_a_removal_at_a_far_future_generation_is_refused(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=KEEP) as c:
        await formed(c, FIVE)
        before, gen2 = decisions(c), c.nodes["n2"].generation
        forge(c, lambda r: r["removed"].update({"n2": [NEAR_LIMIT, 0]}))
        await trio.sleep(10)
        where = f"seed={seed}\n{describe(c)}"
        assert refused(c, "generation_ahead") == 5, where
        assert all_up(c, FIVE) and c.nodes["n2"].generation == gen2, where
        assert decisions(c) == before, f"seed={seed}: a forged removal changed the decisions"
        stats = c.nodes["n3"].statistics()
        assert stats.refusals.get("gossip_generation_ahead") == 1, stats.refusals


async def test_an_entry_at_a_far_future_generation_is_refused(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=KEEP) as c:
        await formed(c, FIVE)
        gen2 = c.nodes["n2"].generation
        hijack = NodeDelta("n2", NEAR_LIMIT, 1, 0, 2, (VersionedEntry("addr", "evil:7400", 1),))
        for name in ("n1", "n3"):
            c.nodes[name]._runtime().gossiper.apply_delta((hijack,), trio.current_time())
        await trio.sleep(10)
        where = f"seed={seed}\n{describe(c)}"
        assert refused(c, "generation_ahead") == 2, where
        for node in c.nodes.values():
            g = node._runtime().gossiper
            assert g.member_generations()["n2"] == gen2, where
            assert g.address_of("n2") != "evil:7400", where


async def test_epochs_near_the_limit_or_far_ahead_are_refused_and_the_leader_goes_on(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=KEEP) as c:
        await formed(c, FIVE)
        before = decisions(c)
        current = table_of(c)
        empty = PartitionTable(NEAR_LIMIT, NEAR_LIMIT, current.n, (("n1",),))

        def near_limit(r: dict[str, Any]) -> None:
            r["term"] = r["seq"] = NEAR_LIMIT
            r["table"] = empty.to_plain()

        def far_ahead(r: dict[str, Any]) -> None:
            r["term"] += MAX_EPOCH_STEP + 1
            r["removed"]["n4"] = [c.nodes["n4"].generation, 0]

        forge(c, near_limit)
        forge(c, far_ahead)
        where = f"seed={seed}\n{describe(c)}"
        assert refused(c, "epoch_limit") == 5 and refused(c, "epoch_step") == 5, where
        assert decisions(c) == before, f"seed={seed}: forged epochs changed the decisions"
        # The leader still decides: a new member is admitted and gets partitions.
        await c.start("n6", seeds=["n1"])
        with trio.fail_after(60):
            await c.wait_until(lambda: all_up(c, [*FIVE, "n6"]))
            await c.wait_until(
                lambda: all(
                    (t := n._runtime().gossiper.table()) is not None and t.owned_by("n6")
                    for n in c.nodes.values()
                )
            )
        assert leaders(c) == {"n1"}, where


async def test_a_table_of_unknown_members_or_another_shape_is_refused(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=KEEP) as c:
        await formed(c, FIVE)
        before = decisions(c)
        current = table_of(c)
        strangers = PartitionTable(
            current.term, current.seq + 1, current.n, (("x1", "x2", "x3"),) * current.q
        )
        fewer = PartitionTable(current.term, current.seq + 1, current.n, current.owners[:1])
        for table in (strangers, fewer):
            forge(c, lambda r, t=table: r.update(seq=r["seq"] + 1, table=t.to_plain()))
        where = f"seed={seed}\n{describe(c)}"
        assert refused(c, "table_invalid") == 10, where
        for name, record in decisions(c).items():
            assert record["table"] == before[name]["table"], where


async def test_a_removal_of_an_unseen_incarnation_costs_one_rejoin(
    seed: int, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A plausible forgery can't be told from a decision without authentication (TLS); what it
    # costs is bounded. A removal of an incarnation newer than any seen is lowered to the one
    # seen: the member rejoins once, at its own clock, not quarantined for ten minutes.
    async with open_sim_cluster(5, seed=seed, config=KEEP) as c:
        await formed(c, FIVE)
        gen2 = c.nodes["n2"].generation
        removed_at = gen2 + 600_000  # ten minutes ahead: within the bound
        forge(c, lambda r: r["removed"].update({"n2": [removed_at, 0]}))
        with trio.fail_after(60):
            await c.wait_until(lambda: c.nodes["n2"].generation > gen2)
            await c.wait_until(lambda: all_up(c, FIVE))
        where = f"seed={seed}\n{describe(c)}"
        assert c.nodes["n2"].generation < removed_at, where
        assert refused(c, "removal_unseen") == 5, where
        rejoins = [r for r in caplog.records if "n2 was removed by the leader" in r.getMessage()]
        assert len(rejoins) == 1, where


async def test_a_shutdown_notice_for_another_member_is_refused(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=KEEP) as c:
        await formed(c, FIVE)
        before, gen3 = decisions(c), c.nodes["n3"].generation
        # A member's own connection may announce only its own stop: n4 speaking for n3 is refused.
        for name in ("n1", "n2", "n5"):
            c.nodes[name]._runtime().gossiper.on_shutdown(
                Shutdown("n3", gen3), trio.current_time(), sender="n4"
            )
        await trio.sleep(20)
        where = f"seed={seed}\n{describe(c)}"
        assert refused(c, "shutdown_not_own") == 3, where
        assert all_up(c, FIVE) and c.nodes["n3"].generation == gen3, where
        assert decisions(c) == before, f"seed={seed}: a forged shutdown changed the decisions"
        stats = c.nodes["n1"].statistics()
        assert stats.refusals.get("gossip_shutdown_not_own") == 1, stats.refusals


async def test_forged_entries_of_a_live_incarnation_are_refuted(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=KEEP) as c:
        await formed(c, FIVE)
        before = decisions(c)
        n2 = c.nodes["n2"]._runtime().gossiper
        own = n2._self
        # Versions and a heartbeat n2 never wrote: "left", and a heartbeat that would make every
        # real one look old (n2 silent, so down).
        forged = NodeDelta(
            "n2",
            own.generation,
            own.heartbeat + 10_000,
            own.max_version,
            own.max_version + 5,
            (VersionedEntry("status", "left", own.max_version + 5),),
        )
        for name in ("n1", "n3"):
            c.nodes[name]._runtime().gossiper.apply_delta((forged,), trio.current_time())
        # n2 hears of it from the digests, refutes it, and the truth wins everywhere.
        with trio.fail_after(30):
            await c.wait_until(lambda: n2.counters.refused.get("forged_self", 0) >= 1)
        with trio.move_on_after(60):
            await c.wait_until(lambda: all_up(c, FIVE))
            # The leader planned a table without n2 meanwhile; it plans one with n2 once the
            # views converge again.
            await c.wait_until(lambda: bool(table_of(c).owned_by("n2")))
        where = f"seed={seed}\n{describe(c)}"
        assert all_up(c, FIVE), where
        assert all(
            node._runtime().gossiper.member_generations()["n2"] == own.generation
            for node in c.nodes.values()
        ), where
        # What the leader did meanwhile (a table without n2, then with it again) is undone; no
        # member was removed, no exit recorded, no grant changed.
        for name, record in decisions(c).items():
            for part in ("grants", "removed", "exited"):
                assert record[part] == before[name][part], f"{where}\n{part} of {name} changed"
        assert table_of(c).owned_by("n2"), where


async def test_a_moved_address_diverts_no_replica_traffic(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=KEEP) as c:
        await formed(c, FIVE)
        evil = await c.start("evil")  # a peer of its own cluster of one, happy to store anything
        gen2 = c.nodes["n2"].generation
        # A newer incarnation of n2 (plausible: a second ahead) at evil's address.
        hijack = NodeDelta(
            "n2",
            gen2 + 1000,
            1,
            0,
            2,
            (VersionedEntry("addr", c.address("evil"), 1), VersionedEntry("status", "up", 2)),
        )
        for name in ("n1", "n3", "n4", "n5"):
            c.nodes[name]._runtime().gossiper.apply_delta((hijack,), trio.current_time())
        table = table_of(c)
        owned = [
            k
            for k in (f"k{i}" for i in range(200))
            if "n2" in table.owners[partition_of(k, table.q)]
        ]
        for key in owned[:20]:
            await c.nodes["n1"].put(key, "v")
        where = f"seed={seed}\n{describe(c)}"
        assert c.nodes["n1"].statistics().refusals.get("wrong_member", 0) >= 1, where
        for key in owned[:20]:
            assert (await evil.get(key, local=True)).values == [], f"{where}\n{key} diverted"
