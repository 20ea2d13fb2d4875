"""Regressions found in review: what a minority, a confused peer or a hostile connection must not do."""

from __future__ import annotations

import trio
import trio.testing

from gossipkv import GossipConfig, open_client
from gossipkv._messages import Ack, NodeDelta, VersionedEntry
from gossipkv.testing import open_sim_cluster

from ._checks import all_up, describe, leaders, settle, statuses

FAST_REMOVE = GossipConfig(remove_after=8.0)
FIVE = ["n1", "n2", "n3", "n4", "n5"]


async def test_minority_with_new_joiners_cannot_outvote_the_majority(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=FAST_REMOVE) as c:
        await settle(c, FIVE)
        await trio.sleep(5)
        majority, minority = ["n1", "n2", "n3"], ["n4", "n5", "x1", "x2"]
        c.partition(majority, minority)
        await trio.sleep(6)
        await c.start("x1", seeds=["n4"])
        await c.start("x2", seeds=["n4"])
        await trio.sleep(30)
        for name in ("n4", "n5"):
            seen = statuses(c, name)
            assert all(seen[m] == "down" for m in majority), f"seed={seed}\n{describe(c)}"
            assert seen["x1"] == seen["x2"] == "joining", (
                f"seed={seed}: no admission without majority"
            )
        c.heal()
        everyone = [*FIVE, "x1", "x2"]
        with trio.fail_after(60):
            await c.wait_until(lambda: all_up(c, everyone))
        assert leaders(c) == {"n1"}, f"seed={seed}\n{describe(c)}"


async def test_a_gossiped_address_that_does_not_parse_is_ignored(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(3, seed=seed) as c:
        await settle(c, FIVE[:3])
        ghost = NodeDelta(
            "ghost",
            1,
            1,
            0,
            2,
            (VersionedEntry("addr", "no-port-here", 1), VersionedEntry("status", "up", 2)),
        )
        async with open_client(["n1:7400"], transport=c.net.transport("evil:7400")) as client:
            channel = await client._connection.connect()
            await channel.notify(Ack((ghost,)))  # clients may not gossip: closed and counted
        await trio.sleep(5)
        assert sorted(c.nodes) == FIVE[:3], f"seed={seed}"
        refusals = c.nodes["n1"].statistics().refusals
        assert refusals.get("member_message_from_client") == 1, f"seed={seed}: {refusals}"
        # Even from a peer, the unusable address is never dialled and nobody crashes.
        gossiper = c.nodes["n2"]._runtime().gossiper
        gossiper.apply_delta((ghost,), trio.current_time())
        await trio.sleep(5)
        assert sorted(c.nodes) == FIVE[:3], f"seed={seed}"
        assert {m.name: m.address for m in c.nodes["n2"].members()}["ghost"] is None


async def test_removed_while_leaving_still_finishes_the_leave(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=FAST_REMOVE) as c:
        await settle(c, FIVE)
        await trio.sleep(5)
        n5 = c.nodes["n5"]
        c.pause("n5")
        with trio.fail_after(60):
            await c.wait_until(lambda: statuses(c, "n1").get("n5") == "removed")
        c.resume("n5")
        generation = n5.generation
        with trio.fail_after(15):
            await n5.leave()
        with trio.fail_after(5):
            await c.wait_until(lambda: "n5" not in c.nodes)
        assert n5.generation == generation, f"seed={seed}: it left instead of rejoining"
