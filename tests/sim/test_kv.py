"""Data-path scenarios on simulated clusters (datapath.md §d.2-§d.7), each across 5 seeds.

Whole clusters of real Node objects run on SimNetwork under an autojump MockClock: every duration
below is simulated seconds. Replica state is inspected on each peer's simulated disk
(``cluster.storage[name]``) or with ``get(..., local=True)``. Every assertion names its seed.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import KVConfig
from gossipkv._messages import KvPut, KvResult, ReplicaPut
from gossipkv.testing import SimCluster

from ._kvsim import (
    covers,
    ctx,
    dots,
    find_key,
    kv_cluster,
    live,
    names,
    owners,
    reachable,
    service,
    stored,
    tombstones,
    values_of,
    wait_replicas_equal,
)

KV_SEEDS = [101, 202, 303, 404, 505]


@pytest.fixture(params=KV_SEEDS, ids=[f"seed{s}" for s in KV_SEEDS])
def kvseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


# --- round trips and coordination ----------------------------------------------------------


async def test_round_trip_via_any_peer(kvseed: int, autojump_clock: trio.testing.MockClock) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        with trio.fail_after(30):
            for i, writer in enumerate(names(5)):
                key = f"rt{i}"
                put = await c.nodes[writer].put(key, {"n": i, "by": writer})
                assert put.values == [{"n": i, "by": writer}], f"seed={seed}: {put}"
                for reader in names(5):
                    got = await c.nodes[reader].get(key)
                    assert got.found and got.values == [{"n": i, "by": writer}], (
                        f"seed={seed}: {key} written via {writer}, read via {reader}: {got}"
                    )
                    assert ctx(got.context) == ctx(put.context), f"seed={seed}"
            missing = await c.nodes["n3"].get("never-written")
            assert not missing.found and missing.values == [] and missing.context == b"", (
                f"seed={seed}: {missing}"
            )


async def test_put_via_non_replica_is_forwarded_and_mints_one_dot(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = find_key(c, lambda o: True)
        own = owners(c, key)
        outsider = next(n for n in names(5) if n not in own)
        with trio.fail_after(30):
            put = await c.nodes[outsider].put(key, "v1")
            assert put.values == ["v1"], f"seed={seed}: {put}"
            assert service(c.nodes[outsider]).counters.forwarded == 1, f"seed={seed}"
            clock = await wait_replicas_equal(c, key, own, within=5, seed=seed)
        assert dots(clock) == 1 and len(clock.entries) == 1, f"seed={seed}: {clock}"
        assert live(clock) == ["v1"], f"seed={seed}: {clock}"
        assert clock.entries[0].actor.startswith(f"{own[0]}/"), (
            f"seed={seed}: the dot was minted by {clock.entries[0].actor}, not the first owner "
            f"{own[0]}"
        )
        assert ctx(put.context) == {clock.entries[0].actor: 1}, f"seed={seed}"
        for other in names(5):
            if other not in own:
                assert await stored(c, other, key) is None, f"seed={seed}: {other} holds {key}"


# --- siblings ------------------------------------------------------------------------------


async def test_basho_sibling_explosion_sequence(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """datapath.md §d.2 steps 1-4, clients Y and X writing through two different non-replicas."""
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = find_key(c, lambda o: True, prefix="person")
        own = owners(c, key)
        y, x = [n for n in names(5) if n not in own]
        with trio.fail_after(30):
            step1 = await c.nodes[y].put(key, "Bob")
            assert step1.values == ["Bob"], f"seed={seed}: step 1 {step1}"
            (actor,) = ctx(step1.context)
            assert ctx(step1.context) == {actor: 1}, f"seed={seed}"
            step2 = await c.nodes[x].put(key, "Sue")
            assert step2.values == ["Sue", "Bob"], f"seed={seed}: step 2 {step2}"
            assert ctx(step2.context) == {actor: 2}, f"seed={seed}"
            step3 = await c.nodes[y].put(key, "Rita", context=step1.context)
            assert step3.values == ["Rita", "Sue"], f"seed={seed}: step 3 {step3}"
            assert ctx(step3.context) == {actor: 3}, f"seed={seed}"
            step4 = await c.nodes[x].put(key, "Michelle", context=step2.context)
            assert step4.values == ["Michelle", "Rita"], f"seed={seed}: step 4 {step4}"
            assert ctx(step4.context) == {actor: 4}, f"seed={seed}"
            got = await c.nodes[y].get(key)
            assert got.values == ["Michelle", "Rita"], f"seed={seed}: {got}"
            await wait_replicas_equal(c, key, own, within=5, seed=seed)


async def test_two_clients_hundred_iterations_keep_two_siblings(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """riak_test sibling_explosion: each client keeps its own put's return body as its read."""
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "explode"
        own = owners(c, key)
        via = {"A": names(5)[0], "B": names(5)[-1]}
        state: dict[str, tuple[list[object], bytes | None]] = {"A": ([], None), "B": ([], None)}
        written: set[int] = set()
        with trio.fail_after(120):
            for i in range(200):
                who = "AB"[i % 2]
                values, context = state[who]
                union: set[int] = set()
                for v in values:
                    assert isinstance(v, list), f"seed={seed}: {v!r}"
                    union.update(v)
                union.add(i)
                written.add(i)
                res = await c.nodes[via[who]].put(key, sorted(union), context=context)
                assert len(res.values) <= 2, f"seed={seed}: iteration {i}: {len(res.values)} siblings"
                state[who] = (res.values, res.context)
            got = await c.nodes["n3"].get(key)
        assert len(got.values) == 2, f"seed={seed}: {len(got.values)} siblings: {got.values}"
        final: set[int] = set()
        for v in got.values:
            assert isinstance(v, list)
            final.update(v)
        assert final == written, f"seed={seed}: lost {sorted(written - final)}"
        with trio.fail_after(10):
            clock = await wait_replicas_equal(c, key, own, within=5, seed=seed)
        assert values_of(clock) == 2, f"seed={seed}: {clock}"


# --- read repair (§d.4) ----------------------------------------------------------------------


async def all_reachable(c: SimCluster) -> None:
    """Wait until every running peer can reach every other one again (after a heal)."""
    with trio.fail_after(15):
        await c.wait_until(lambda: all(reachable(c, n) == set(c.nodes) for n in c.nodes))


async def _local_views(
    c: SimCluster, key: str, among: list[str]
) -> list[tuple[list[object], dict[str, int]]]:
    out = []
    for m in among:
        got = await c.nodes[m].get(key, local=True)
        out.append((got.values, ctx(got.context)))
    return out


async def test_read_repair_a_stale_replica_after_partition(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "rr-a"
        o1, o2, o3 = owners(c, key)
        with trio.fail_after(30):
            first = await c.nodes[o1].put(key, "v1", w=3)
            c.partition([o3], [n for n in names(5) if n != o3])
            second = await c.nodes[o1].put(key, "v2", context=first.context)
            assert second.values == ["v2"], f"seed={seed}: {second}"
            c.heal()
            assert live(await stored(c, o3, key)) == ["v1"], f"seed={seed}: {o3} is not stale"
            got = await c.nodes[o2].get(key, r=2)
            assert got.values == ["v2"], f"seed={seed}: {got}"
            await wait_replicas_equal(c, key, [o1, o2, o3], within=5, seed=seed)
            views = await _local_views(c, key, [o1, o2, o3])
        assert all(v == (["v2"], ctx(second.context)) for v in views), f"seed={seed}: {views}"
        assert sum(service(n).counters.read_repairs for n in c.nodes.values()) >= 1, f"seed={seed}"


async def test_read_repair_b_notfound_replica(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "rr-b"
        o1, o2, o3 = owners(c, key)
        reader = next(n for n in names(5) if n not in (o1, o2, o3))
        with trio.fail_after(30):
            c.partition([o3], [n for n in names(5) if n != o3])
            put = await c.nodes[o1].put(key, "v1", w=2)
            c.heal()
            assert await stored(c, o3, key) is None, f"seed={seed}: {o3} already has {key}"
            got = await c.nodes[reader].get(key, r=2)
            assert got.values == ["v1"], f"seed={seed}: {got}"
            await wait_replicas_equal(c, key, [o1, o2, o3], within=5, seed=seed)
            views = await _local_views(c, key, [o1, o2, o3])
        assert all(v == (["v1"], ctx(put.context)) for v in views), f"seed={seed}: {views}"
        assert service(c.nodes[reader]).counters.read_repairs == 1, f"seed={seed}"


async def test_read_repair_c_three_concurrent_writes_merge_everywhere(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    # Sloppy quorums off: an isolated owner must not find a fallback that carries its write.
    async with kv_cluster(seed, kv=KVConfig(sloppy_quorum=False)) as c:
        key = "rr-c"
        own = owners(c, key)
        reader = next(n for n in names(5) if n not in own)
        with trio.fail_after(30):
            c.partition(*([o] for o in own))
            async with trio.open_nursery() as nursery:
                for i, o in enumerate(own):
                    nursery.start_soon(lambda o=o, i=i: c.nodes[o].put(key, f"w{i}", w=1))
            await trio.sleep(2)  # the replications give up (frames across the cut are dropped)
            c.heal()
            for i, o in enumerate(own):
                assert live(await stored(c, o, key)) == [f"w{i}"], f"seed={seed}: {o}"
            got = await c.nodes[reader].get(key, r=2)
            # At least R=2 replies are merged (a third one may already be in).
            assert len(got.values) >= 2 and set(got.values) <= {"w0", "w1", "w2"}, (
                f"seed={seed}: {got}"
            )
            clock = await wait_replicas_equal(c, key, own, within=5, seed=seed)
        assert sorted(live(clock)) == ["w0", "w1", "w2"], f"seed={seed}: {clock}"
        assert service(c.nodes[reader]).counters.read_repairs == 3, (
            f"seed={seed}: every replica missed two writes, so all three needed repair"
        )


async def test_read_repair_d_put_with_dominating_context_survives_a_racing_repair(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "rr-d"
        o1, o2, o3 = owners(c, key)
        with trio.fail_after(30):
            first = await c.nodes[o1].put(key, "v1", w=3)
            c.partition([o3], [n for n in names(5) if n != o3])
            await c.nodes[o1].put(key, "v2", context=first.context)
            c.heal()
            # Frames to the stale replica are slow: its read reply comes late, so the repair (sent
            # after it) is still in flight when the next put lands.
            c.net.set_link(dst=c.address(o3), latency=0.3)
            got = await c.nodes[o1].get(key, r=2)
            assert got.values == ["v2"], f"seed={seed}: {got}"
            assert service(c.nodes[o1]).counters.read_repairs == 0, f"seed={seed}: repair too early"
            put = await c.nodes[o1].put(key, "v3", context=got.context, w=3)
            assert put.values == ["v3"], f"seed={seed}: {put}"
            with trio.fail_after(5):
                await c.wait_until(lambda: service(c.nodes[o1]).counters.read_repairs >= 1)
            clock = await wait_replicas_equal(c, key, [o1, o2, o3], within=5, seed=seed)
            final = await c.nodes[o2].get(key, r=3)
        assert live(clock) == ["v3"], f"seed={seed}: the repair undid the put: {clock}"
        assert final.values == ["v3"], f"seed={seed}: {final}"


async def test_read_repair_e_blocking_reads_never_go_backwards(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed, kv=KVConfig(blocking_read_repair=True)) as c:
        key = "rr-e"
        o1, o2, o3 = owners(c, key)
        outsider = next(n for n in names(5) if n not in (o1, o2, o3))
        rest = [n for n in names(5) if n != o1]
        with trio.fail_after(60):
            prev = await c.nodes[o1].put(key, 0, w=3)
            for i in range(1, 6):
                # Only o1 gets write i; o2 and o3 stay one behind.
                c.partition([o1], rest)
                prev = await c.nodes[o1].put(key, i, context=prev.context, w=1)
                await trio.sleep(1.5)
                c.heal()
                await all_reachable(c)
                assert live(await stored(c, o2, key)) == [i - 1], f"seed={seed}: step {i}"
                # Read 1 includes o1's reply (it coordinates), so it sees write i.
                read1 = await c.nodes[o1].get(key, r=2)
                assert read1.values == [i], f"seed={seed}: step {i}: {read1}"
                # Read 2 can only hear from o2 and o3: it must not go back to i - 1.
                c.partition([o1], rest)
                read2 = await c.nodes[outsider].get(key, r=2)
                c.heal()
                await all_reachable(c)
                assert read2.values == [i], f"seed={seed}: step {i}: read went back: {read2}"
                assert covers(ctx(read2.context), ctx(read1.context)), f"seed={seed}: step {i}"
