"""Ownership handoff on simulated clusters: when the partition table changes, the keys a peer holds
for partitions it no longer owns reach the new owners (no reads, no anti-entropy, no hints).

Every duration is simulated seconds (autojump MockClock); every assertion names its seed.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import GossipConfig, KVConfig, _dvv
from gossipkv import _handoff as handoff
from gossipkv._dvv import Sibling
from gossipkv.testing import SimCluster

from ._kvsim import kv_cluster, names, owners, replicas_equal, service, stored, table, tables_agree

HANDOFF_SEEDS = [11, 22, 33]


@pytest.fixture(params=HANDOFF_SEEDS, ids=[f"seed{s}" for s in HANDOFF_SEEDS])
def hseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


async def test_a_killed_member_that_restarts_keeps_its_partitions(
    hseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A restart under the same name (a new generation, first ``joining``) within
    ``remove_after`` publishes no new table: no replica moves (DESIGN §7, few moves on change)."""
    seed = hseed
    kv = KVConfig(anti_entropy_interval=0)
    async with kv_cluster(seed, kv=kv) as c:
        before = table(c.nodes["n1"])
        assert before is not None, f"seed={seed}"
        with trio.fail_after(120):
            c.kill("n3")
            await trio.sleep(5)
            await c.restart("n3", seeds=["n1"], kv=kv)
            await c.wait_until(lambda: c.nodes["n3"].status == "up")
            await trio.sleep(20)
        for name in names(5):
            after = table(c.nodes[name])
            assert after is not None and after.owners == before.owners, (
                f"seed={seed}: {name} holds another table after the restart: "
                f"{before.epoch} -> {after and after.epoch}"
            )


INTERVAL = 1.0
WITHIN = 60.0
KEYS = 60


def handoff_activity(c: SimCluster) -> tuple[int, int, int]:
    """Summed ownership handoff (partitions handed off, keys sent, errors) of the running peers."""
    counters = [service(n).ownership_handoff.counters for n in c.nodes.values()]
    return (
        sum(x.partitions_handed_off for x in counters),
        sum(x.keys_sent for x in counters),
        sum(x.errors for x in counters),
    )


async def lacking(c: SimCluster, keys: list[str]) -> list[tuple[str, str]]:
    """``(key, owner)`` pairs where a current owner holds nothing for the key."""
    return [(k, o) for k in keys for o in owners(c, k) if await stored(c, o, k) is None]


async def write_then_join(
    c: SimCluster, seed: int, kv: KVConfig, joiners: list[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """Write ``KEYS`` keys with W=3, then start ``joiners`` and wait for the new table.

    Returns the keys and their owners before the joins."""
    keys = [f"ho{i}" for i in range(KEYS)]
    for key in keys:
        put = await c.nodes["n1"].put(key, {"k": key}, w=3)
        assert put.values == [{"k": key}], f"seed={seed}: {put}"
    before = {k: owners(c, k) for k in keys}
    for name in joiners:
        await c.start(name, seeds=["n1"], kv=kv)
    await c.wait_until(lambda: tables_agree(c, names(5) + joiners))
    moved = [k for k in keys if set(owners(c, k)) - set(before[k])]
    assert len(moved) >= 10, f"seed={seed}: only {len(moved)} keys got a new owner"
    return keys, before


async def test_keys_reach_the_new_owners_after_a_join(
    hseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Two members join; every current owner of every key holds it within ``WITHIN`` simulated
    seconds, with no reads, no anti-entropy and no hints (ownership handoff alone)."""
    seed = hseed
    kv = KVConfig(anti_entropy_interval=0, ownership_handoff_interval=INTERVAL)
    async with kv_cluster(seed, kv=kv) as c:
        with trio.fail_after(WITHIN + 120):
            keys, before = await write_then_join(c, seed, kv, ["n6", "n7"])
            joined = trio.current_time()
            with trio.move_on_after(WITHIN):
                while await lacking(c, keys):  # noqa: ASYNC110 - simulated time
                    await trio.sleep(0.5)
            took = trio.current_time() - joined
            missing = await lacking(c, keys)
            assert missing == [], f"seed={seed}: owners still lack {missing[:5]} after {took}s"
            for key in keys:
                first = await stored(c, before[key][0], key)
                for owner in owners(c, key):
                    assert await stored(c, owner, key) == first, f"seed={seed}: {key} on {owner}"
            # Every former owner sends its own copy (a partition may have lost two owners); once
            # each has handed its partitions off, they are not sent again.
            await trio.sleep(10 * INTERVAL)
            quiet = handoff_activity(c)
            await trio.sleep(20 * INTERVAL)
            assert handoff_activity(c) == quiet, f"seed={seed}: {quiet} -> {handoff_activity(c)}"
        partitions, sent, errors = quiet
        assert partitions > 0 and sent >= 10 and errors == 0, f"seed={seed}: {quiet}"
        # Every running peer: a joiner admitted before the other may own a partition for one
        # table and hand it on to the second.
        stats = [node.statistics() for node in c.nodes.values()]
        assert sum(s.ownership_handoff_keys for s in stats) == sent, f"seed={seed}"
        assert sum(s.ownership_handoff_partitions for s in stats) == partitions, f"seed={seed}"
        assert sum(service(n).counters.read_repairs for n in c.nodes.values()) == 0, f"seed={seed}"
        print(f"seed={seed}: {sent} keys, {partitions} partitions handed off in {took:.1f} s")


async def test_without_ownership_handoff_the_new_owners_lack_keys(
    hseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """The negative control: the same joins with handoff off leave new owners without the keys."""
    seed = hseed
    kv = KVConfig(anti_entropy_interval=0, ownership_handoff_interval=0)
    async with kv_cluster(seed, kv=kv) as c:
        with trio.fail_after(WITHIN + 120):
            keys, _ = await write_then_join(c, seed, kv, ["n6", "n7"])
            await trio.sleep(WITHIN)
        missing = await lacking(c, keys)
        assert len(missing) >= 10, f"seed={seed}: only {missing} lack their keys"
        assert handoff_activity(c) == (0, 0, 0), f"seed={seed}: {handoff_activity(c)}"


async def test_a_removed_member_is_replaced_by_anti_entropy_not_handoff(
    hseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A killed member removed by the leader (short ``remove_after``) hands nothing off: it is
    gone. Its replacements are filled by the partition's remaining owners, which are current
    owners, so that is anti-entropy's work: with handoff alone they stay empty, with
    anti-entropy as well they converge."""
    seed = hseed
    config = GossipConfig(remove_after=10.0)
    for ae_interval in (0.0, 0.5):
        kv = KVConfig(
            anti_entropy_interval=ae_interval,
            ownership_handoff_interval=INTERVAL,
            sloppy_quorum=False,
        )
        async with kv_cluster(seed, kv=kv, config=config) as c:
            keys = [f"rm{i}" for i in range(KEYS)]
            with trio.fail_after(WITHIN + 120):
                for key in keys:
                    await c.nodes["n1"].put(key, key, w=3)
                gone = [k for k in keys if "n3" in owners(c, k)]
                c.kill("n3")
                await c.wait_until(lambda: tables_agree(c, ["n1", "n2", "n4", "n5"]))
                with trio.move_on_after(WITHIN):
                    while await lacking(c, keys):  # noqa: ASYNC110 - simulated time
                        await trio.sleep(0.5)
            missing = await lacking(c, keys)
            assert len(gone) >= 10, f"seed={seed}: only {len(gone)} keys on the removed member"
            if ae_interval:
                assert missing == [], f"seed={seed}: {missing} with anti-entropy"
            else:
                assert len(missing) >= 10, f"seed={seed}: only {missing} lacking, handoff alone"


async def test_a_late_write_to_a_former_owner_is_sent_again(
    hseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """After a partition was handed off whole, a newer clock stored at the former owner (a late
    replica write) is sent again, and the current owners end with it."""
    seed = hseed
    kv = KVConfig(anti_entropy_interval=0, ownership_handoff_interval=INTERVAL)
    async with kv_cluster(seed, kv=kv) as c:
        with trio.fail_after(WITHIN + 120):
            keys, before = await write_then_join(c, seed, kv, ["n6"])
            with trio.move_on_after(WITHIN):
                while await lacking(c, keys):  # noqa: ASYNC110 - simulated time
                    await trio.sleep(0.5)
            assert await lacking(c, keys) == [], f"seed={seed}"
            key = next(k for k in keys if set(before[k]) - set(owners(c, k)))
            former = next(o for o in before[key] if o not in owners(c, key))
            # A newer clock (a write minted elsewhere) reaches only the former owner.
            old = await stored(c, former, key)
            assert old is not None, f"seed={seed}"
            clock = _dvv.update(_dvv.new(_dvv.join(old), Sibling("late")), old, "late-actor")
            sent = service(c.nodes[former]).ownership_handoff.counters.keys_sent
            await service(c.nodes[former]).apply(key, clock)
            for owner in owners(c, key):
                assert await stored(c, owner, key) != clock, f"seed={seed}: {owner} has it"
            with trio.move_on_after(WITHIN):
                while not await replicas_equal(c, key, [*owners(c, key), former]):  # noqa: ASYNC110
                    await trio.sleep(0.5)
        assert await replicas_equal(c, key, [*owners(c, key), former]), (
            f"seed={seed}: {key} differs after a late write"
        )
        assert await stored(c, former, key) == clock, f"seed={seed}"
        later = service(c.nodes[former]).ownership_handoff.counters.keys_sent
        assert later > sent, f"seed={seed}: {sent} -> {later} keys sent"


async def test_an_owner_that_is_down_is_retried_without_crashing(
    hseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A former owner that believes a down owner reachable times out on it (bounded by
    ``replica_timeout``), counts the failure, keeps running, and finishes once it is back."""
    seed = hseed
    kv = KVConfig(anti_entropy_interval=0, ownership_handoff_interval=0, sloppy_quorum=False)
    async with kv_cluster(seed, kv=kv) as c:
        with trio.fail_after(WITHIN + 120):
            keys, before = await write_then_join(c, seed, kv, ["n6"])
            key = next(k for k in keys if "n6" in owners(c, k))
            former = next(o for o in before[key] if o not in owners(c, key))
            sender = service(c.nodes[former])
            c.kill("n6")
            sender._reachable = lambda: set(names(6))  # stale reachability: n6 looks up
            sent = await sender.ownership_handoff.round()
            counters = sender.ownership_handoff.counters
            # One timeout, then no other partition waits on the same owner this round.
            assert counters.errors == 1, f"seed={seed}: {counters}"
            assert await stored(c, "n6", key) is None, f"seed={seed}"
            await c.restart("n6", seeds=["n1"], kv=kv)
            await c.wait_until(lambda: tables_agree(c, names(6)))
            for _ in range(10):
                sent += await sender.ownership_handoff.round()
            assert await stored(c, "n6", key) is not None, f"seed={seed}: {counters}"
            assert c.nodes[former].status == "up", f"seed={seed}"


async def test_paging_resumes_and_a_write_behind_the_cursor_is_sent_again(
    hseed: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One key a round: each round sends at most one, rounds resume where they stopped, and a
    newer clock stored for a key already sent during an unfinished pass is sent again."""
    seed = hseed
    monkeypatch.setattr(handoff, "MAX_KEYS_PER_ROUND", 1)
    kv = KVConfig(anti_entropy_interval=0, ownership_handoff_interval=0)
    async with kv_cluster(seed, kv=kv) as c:
        with trio.fail_after(WITHIN + 120):
            keys = [f"pg{i}" for i in range(300)]
            for key in keys:
                await c.nodes["n1"].put(key, key, w=3)
            await c.start("n6", seeds=["n1"], kv=kv)
            await c.wait_until(lambda: tables_agree(c, names(6)))
            # A former owner part way through a partition of several keys.
            sender = None
            for name in names(5):
                ho = service(c.nodes[name]).ownership_handoff
                for _ in range(40):
                    assert await ho.round() <= 1, f"seed={seed}: more than one key a round"
                    if ho._resume:
                        sender = name
                        break
                if sender is not None:
                    break
            assert sender is not None, f"seed={seed}: no partition took more than one round"
            ho = service(c.nodes[sender]).ownership_handoff
            p, (_, behind, _) = next(iter(ho._resume.items()))
            old = await stored(c, sender, behind)
            assert old is not None, f"seed={seed}"
            clock = _dvv.update(_dvv.new(_dvv.join(old), Sibling("late")), old, "late-actor")
            await service(c.nodes[sender]).apply(behind, clock)
            for name in names(5):
                ho = service(c.nodes[name]).ownership_handoff
                for _ in range(400):
                    if await ho.round() == 0:
                        break
            assert await lacking(c, keys) == [], f"seed={seed}: {await lacking(c, keys)}"
            for owner in owners(c, behind):
                assert await stored(c, owner, behind) == clock, (
                    f"seed={seed}: {owner} lacks the write to {behind} behind the cursor (p={p})"
                )
