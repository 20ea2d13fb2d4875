"""Membership scenarios on the simulated network (gossip.md §e), each across several seeds.

Every test runs whole clusters of real Node objects on SimNetwork under an autojump MockClock, so
"seconds" below are simulated; each failure message carries the seed and every node's view.
"""

from __future__ import annotations

import gc

import pytest
import trio
import trio.lowlevel
import trio.testing

from gossipkv import GossipConfig
from gossipkv.membership._records import ProbeCounters
from gossipkv.testing import open_sim_cluster

from ._checks import all_see, all_up, by_age, describe, leaders, settle, statuses

FAST_REMOVE = GossipConfig(remove_after=8.0)


def names(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


async def test_ten_peers_converge_through_one_seed(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(10, seed=seed) as c:
        await settle(c, names(10))
        assert leaders(c) == {"n1"}, f"seed={seed}\n{describe(c)}"
        ranks = {m.name: m.age_rank for m in c.nodes["n5"].members()}
        assert ranks["n1"] == 1, f"seed={seed}: the bootstrap peer is the oldest\n{describe(c)}"


async def test_hundred_peers_converge_through_one_seed(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(100, seed=seed) as c:
        with trio.fail_after(30):
            await c.wait_until(lambda: all_up(c, names(100)))
        assert leaders(c) == {"n1"}, f"seed={seed}"


async def test_metadata_reaches_every_peer(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(8, seed=seed) as c:
        await settle(c, names(8))
        c.nodes["n6"].set_metadata("role", "cache")

        def everyone_sees() -> bool:
            return all(
                {m.name: m.metadata for m in node.members()}["n6"] == {"role": "cache"}
                for node in c.nodes.values()
            )

        with trio.fail_after(5):
            await c.wait_until(everyone_sees)
        c.nodes["n6"].set_metadata("role", None)
        with trio.fail_after(5):
            await c.wait_until(
                lambda: all(
                    {m.name: m.metadata for m in n.members()}["n6"] == {} for n in c.nodes.values()
                )
            )


async def test_delta_budget_is_respected_and_state_still_converges(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    config = GossipConfig(max_delta_bytes=2048)
    async with open_sim_cluster(6, seed=seed, config=config) as c:
        await settle(c, names(6))
        for name in names(6):
            for i in range(30):
                c.nodes[name].set_metadata(f"k{i:02d}", "x" * 100)

        def complete() -> bool:
            return all(len(m.metadata) == 30 for node in c.nodes.values() for m in node.members())

        with trio.fail_after(30):
            await c.wait_until(complete)
        truncated = sum(n.statistics().budget_truncations for n in c.nodes.values())
        assert truncated > 0, f"seed={seed}: the budget never had to cut a delta"
        stats = c.net.statistics()
        # No frame may exceed the budget plus the envelope and digest overhead.
        biggest = max(n.statistics().bytes_out for n in c.nodes.values())
        assert biggest > 0 and stats.dropped_overflow == 0, f"seed={seed}"


@pytest.mark.parametrize("crash_seed", range(1, 9))
async def test_a_crash_is_down_at_every_peer_within_four_seconds(
    crash_seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    # Issue 15: a SIGKILL is seen by every survivor of a 10-peer cluster within 4 s (simulated).
    seed = crash_seed
    async with open_sim_cluster(10, seed=seed) as c:
        await settle(c, names(10))
        await trio.sleep(5 + seed / 8)  # crash at a different moment of the probe cycle
        killed_at = trio.current_time()
        c.kill("n7")
        with trio.move_on_after(4.0):
            await c.wait_until(lambda: all_see(c, "n7", "down"))
        took = trio.current_time() - killed_at
        assert all_see(c, "n7", "down"), (
            f"seed={seed}: not down everywhere {took:.1f}s after the crash\n{describe(c)}"
        )


def _finished_tasks() -> list[str]:
    gc.collect()
    return [
        o.name
        for o in gc.get_objects()
        if isinstance(o, trio.lowlevel.Task) and o.coro.cr_frame is None
    ]


async def test_a_finished_exchange_or_probe_is_not_held_by_the_channel_it_opened(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    # A probe that dialled a helper started that helper's channel; Trio's start status kept the
    # finished probe (and its nursery) alive for as long as the channel stayed open: thousands
    # of dead tasks at 100 simulated peers, gigabytes at 1,000.
    async with open_sim_cluster(12, seed=seed) as c:
        await settle(c, names(12))
        for name in ("n4", "n8", "n11"):
            c.kill(name)
        with trio.fail_after(30):
            await c.wait_until(lambda: all(all_see(c, n, "down") for n in ("n4", "n8", "n11")))
        held = [n for n in _finished_tasks() if "MembershipRuntime" in n]
        assert held == [], f"seed={seed}: {len(held)} finished tasks held, e.g. {held[:3]}"


async def test_an_idle_cluster_suspects_nobody_for_ten_minutes(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(12, seed=seed, latency=0.002, jitter=0.004) as c:
        await settle(c, names(12))
        downs: list[str] = []
        async with trio.open_nursery() as nursery:
            for name, node in c.nodes.items():
                nursery.start_soon(_collect_downs, node, name, downs)
            await trio.sleep(600)
            nursery.cancel_scope.cancel()
        assert downs == [], f"seed={seed}: false downs {downs}\n{describe(c)}"
        suspicions = {n: k for n, node in c.nodes.items() if (k := _probes(node).suspicions)}
        assert suspicions == {}, f"seed={seed}: suspicions in an idle cluster {suspicions}"
        probes = [_probes(node).probes for node in c.nodes.values()]
        assert min(probes) > 600, f"seed={seed}: every peer kept probing {probes}"


def _probes(node: object) -> ProbeCounters:
    from gossipkv import Node

    assert isinstance(node, Node)
    return node._runtime().gossiper.probe_counters


async def test_no_false_down_under_30_percent_loss(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(10, seed=seed) as c:
        await settle(c, names(10))
        downs: list[str] = []
        async with trio.open_nursery() as nursery:
            for name, node in c.nodes.items():
                nursery.start_soon(_collect_downs, node, name, downs)
            await trio.sleep(1)
            c.net.set_link(loss=0.3)
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
        assert downs == [], f"seed={seed}: false downs {downs}\n{describe(c)}"
        assert all_up(c, names(10)), f"seed={seed}\n{describe(c)}"


async def _collect_downs(node: object, name: str, out: list[str]) -> None:
    from gossipkv import Node

    assert isinstance(node, Node)
    async with node.events() as events:
        async for event in events:
            if event.kind == "down":
                out.append(f"{name} saw {event.node_id} down ({event.detail})")


async def test_an_overloaded_network_convicts_almost_nobody(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    # Every frame up to 2 s late, as on a machine whose cores a hundred peers share: probes time
    # out everywhere, and so do the helpers asked to try. A prober that hears nothing from its
    # helpers either (Lifeguard's missed nack) takes itself for the slow one and slows down.
    # Without that, each of 20 peers published verdicts: about 290 in 40 s.
    async with open_sim_cluster(20, seed=seed) as c:
        await settle(c, names(20))
        await trio.sleep(5)
        before = {n: _probes(node).verdicts for n, node in c.nodes.items()}
        c.net.set_link(latency=0.1, jitter=2.0)
        await trio.sleep(40)
        verdicts = {
            n: k for n, node in c.nodes.items() if (k := _probes(node).verdicts - before[n])
        }
        assert sum(verdicts.values()) <= 3, f"seed={seed}: verdicts published {verdicts}"
        slowed = [n for n, node in c.nodes.items() if _probes(node).missed_nacks]
        assert slowed, f"seed={seed}: no peer noticed that its helpers did not answer"


async def test_local_stall_convicts_nobody(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(6, seed=seed) as c:
        await settle(c, names(6))
        await trio.sleep(5)
        downs: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect_downs, c.nodes["n3"], "n3", downs)
            await trio.lowlevel.checkpoint()
            c.pause("n3")
            await trio.sleep(6)
            c.resume("n3")
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        assert downs == [], f"seed={seed}: the stalled peer convicted others: {downs}"
        assert c.nodes["n3"].statistics().pause_guards > 0, f"seed={seed}"
        assert all_up(c, names(6)), f"seed={seed}: the stalled peer recovers\n{describe(c)}"


async def test_restart_with_new_generation_leaves_one_entry(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(6, seed=seed) as c:
        await settle(c, names(6))
        old_gen = c.nodes["n4"].generation
        before = {m.name: (m.up_number, m.age_rank) for m in c.nodes["n1"].members()}
        await trio.sleep(2)
        await c.restart("n4", seeds=["n1"])
        new_gen = c.nodes["n4"].generation
        assert new_gen > old_gen

        def restarted_everywhere() -> bool:
            return all(
                [(m.generation, m.status) for m in node.members() if m.name == "n4"]
                == [(new_gen, "up")]
                for node in c.nodes.values()
            )

        with trio.fail_after(10):
            await c.wait_until(restarted_everywhere)
        # A restart with the data dir keeps the membership: same admission, same age.
        after = {m.name: (m.up_number, m.age_rank) for m in c.nodes["n1"].members()}
        assert after == before, f"seed={seed}: the restart changed ages {before} -> {after}"
        await trio.sleep(10)
        assert restarted_everywhere(), (
            f"seed={seed}: no ghost of the old incarnation\n{describe(c)}"
        )


async def test_restart_of_the_leader(seed: int, autojump_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(5, seed=seed) as c:
        await settle(c, names(5))
        await trio.sleep(5)
        second = by_age(c, "n3")[1]
        table = c.nodes["n3"]._runtime().gossiper.table()
        c.kill("n1")
        with trio.fail_after(15):
            await c.wait_until(lambda: leaders(c) == {second})
        # Restarted with its data dir (the simulated store): it resumes its admission and age,
        # so it is the oldest again and leads, and not one partition moved.
        await c.start("n1", seeds=[second])
        with trio.fail_after(15):
            await c.wait_until(lambda: all_up(c, names(5)) and leaders(c) == {"n1"})
        ranks = {m.name: m.age_rank for m in c.nodes["n3"].members()}
        assert ranks["n1"] == 1 and ranks[second] == 2, f"seed={seed}: {ranks}"
        for node in c.nodes.values():
            now = node._runtime().gossiper.table()
            assert now is not None and table is not None and now.owners == table.owners, (
                f"seed={seed}: the leader's restart moved partitions"
            )


async def test_graceful_leave_shows_left_not_down(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed) as c:
        await settle(c, names(5))
        downs: list[str] = []
        async with trio.open_nursery() as nursery:
            for name in ("n1", "n2", "n3", "n4"):
                nursery.start_soon(_collect_downs, c.nodes[name], name, downs)
            await trio.lowlevel.checkpoint()
            with trio.fail_after(10):
                await c.nodes["n5"].leave()
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
        assert "n5" not in c.nodes
        assert all_see(c, "n5", "left"), f"seed={seed}\n{describe(c)}"
        assert not any("n5" in d for d in downs), f"seed={seed}: {downs}"


async def test_leader_leaving_hands_over(seed: int, autojump_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(4, seed=seed) as c:
        await settle(c, names(4))
        second = by_age(c, "n4")[1]
        with trio.fail_after(10):
            await c.nodes["n1"].leave()
        with trio.fail_after(5):
            await c.wait_until(lambda: leaders(c) == {second} and all_see(c, "n1", "left"))


async def test_removal_without_resurrection(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=FAST_REMOVE) as c:
        await settle(c, names(5))
        await trio.sleep(5)
        c.kill("n5")
        with trio.fail_after(30):
            await c.wait_until(lambda: all_see(c, "n5", "removed"))
        # n4 is cut off while the others forget n5, so it still holds n5's old state ...
        c.partition(["n4"], ["n1", "n2", "n3"])
        await trio.sleep(2)
        c.heal()
        # ... and gossiping it back must not resurrect the removed incarnation.
        await trio.sleep(20)
        for name in ("n1", "n2", "n3", "n4"):
            assert statuses(c, name).get("n5") == "removed", f"seed={seed}\n{describe(c)}"


async def test_foreign_cluster_is_refused(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(3, seed=seed) as c:
        await settle(c, names(3))
        stranger = await c.start("x1", seeds=["n1"], cluster="other")
        await trio.sleep(10)
        assert stranger.status == "joining", f"seed={seed}"
        assert [m.name for m in stranger.members()] == ["x1"]
        assert all("x1" not in statuses(c, n) for n in names(3)), f"seed={seed}\n{describe(c)}"
        refused = c.nodes["n1"].statistics().refused_handshakes
        assert refused.get("cluster", 0) > 0, f"seed={seed}: {refused}"


async def test_same_leader_after_concurrent_joins(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(2, seed=seed) as c:
        await settle(c, names(2))
        async with trio.open_nursery() as nursery:
            for i in range(3, 11):
                nursery.start_soon(lambda i=i: c.start(f"n{i}", seeds=["n1" if i % 2 else "n2"]))
        with trio.fail_after(20):
            await c.wait_until(lambda: all_up(c, names(10)))
        assert leaders(c) == {"n1"}, f"seed={seed}\n{describe(c)}"
        ups = {tuple(sorted((m.name, m.up_number) for m in n.members())) for n in c.nodes.values()}
        assert len(ups) == 1, f"seed={seed}: every peer agrees on every up_number\n{describe(c)}"
        numbers = [m.up_number for m in c.nodes["n1"].members()]
        assert len(set(numbers)) == 10, f"seed={seed}: distinct ages {numbers}"


async def test_leader_death_and_takeover(seed: int, autojump_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(5, seed=seed, config=FAST_REMOVE) as c:
        await settle(c, names(5))
        await trio.sleep(5)
        second = by_age(c, "n3")[1]
        c.kill("n1")
        with trio.fail_after(15):
            await c.wait_until(lambda: leaders(c) == {second})
        # The new leader keeps deciding: it removes the dead one and admits a newcomer.
        with trio.fail_after(30):
            await c.wait_until(lambda: all_see(c, "n1", "removed"))
        await c.start("n6", seeds=["n3"])
        with trio.fail_after(15):
            await c.wait_until(lambda: all_up(c, ["n2", "n3", "n4", "n5", "n6"]))
        ranks = {m.name: m.up_number for m in c.nodes["n4"].members()}
        assert ranks["n6"] == 6, f"seed={seed}: up_number continues from the maximum seen {ranks}"


async def test_majority_side_alone_changes_topology(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(5, seed=seed, config=FAST_REMOVE) as c:
        await settle(c, names(5))
        await trio.sleep(5)
        majority, minority = ["n1", "n2", "n3"], ["n4", "n5"]
        c.partition(majority, minority)
        with trio.fail_after(30):
            await c.wait_until(
                lambda: all(all_see(c, m, "removed", among=majority) for m in minority)
            )
        await trio.sleep(5)
        for name in minority:
            seen = statuses(c, name)
            assert all(seen[m] == "down" for m in majority), (
                f"seed={seed}: the minority froze its topology\n{describe(c)}"
            )
        assert leaders(c, majority) == {"n1"}
        assert leaders(c, minority) == {by_age(c, "n4", minority)[0]}
        c.heal()
        with trio.fail_after(30):
            await c.wait_until(lambda: all_up(c, names(5)))
        assert leaders(c) == {"n1"}, f"seed={seed}: one leader after heal\n{describe(c)}"


async def test_partition_longer_than_removal_grace_still_heals(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sim_cluster(4, seed=seed, config=FAST_REMOVE) as c:
        await settle(c, names(4))
        c.partition(["n1", "n2", "n3"], ["n4"])
        await trio.sleep(60)
        c.heal()
        with trio.fail_after(30):
            await c.wait_until(lambda: all_up(c, names(4)))
        assert leaders(c) == {"n1"}, f"seed={seed}\n{describe(c)}"


async def test_an_idle_cluster_counts_no_budget_truncations(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    # A SYN-ACK's digest lists only what its sender asked for; the rest was counted as wanted
    # and not sent, so every round of an idle cluster counted a truncation.
    async with open_sim_cluster(5, seed=seed) as c:
        await settle(c, names(5))
        before = {n: node._runtime().gossiper.counters for n, node in c.nodes.items()}
        start = {n: (k.budget_truncations, k.syns_received) for n, k in before.items()}
        await trio.sleep(10)
        for name, node in c.nodes.items():
            k = node._runtime().gossiper.counters
            syns = k.syns_received - start[name][1]
            assert syns > 20, f"seed={seed}: {name} heard {syns} rounds"
            assert k.budget_truncations == start[name][0], (
                f"seed={seed}: {name} counted {k.budget_truncations - start[name][0]} "
                f"truncations in {syns} idle rounds"
            )
