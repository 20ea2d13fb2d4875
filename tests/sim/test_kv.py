"""Data-path scenarios on simulated clusters (datapath.md §d.2-§d.7), each across 5 seeds.

Whole clusters of real Node objects run on SimNetwork under an autojump MockClock: every duration
below is simulated seconds. Replica state is inspected on each peer's simulated disk
(``cluster.storage[name]``) or with ``get(..., local=True)``. Every assertion names its seed.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import KVConfig, _codec
from gossipkv._errors import (
    ClusterNotReady,
    InvalidClock,
    InvalidContext,
    KeyTooLarge,
    QuorumNotReached,
    ValueTooLarge,
)
from gossipkv._kv import encode_wire_clock
from gossipkv._messages import KvPut, KvResult, ReplicaPut
from gossipkv.storage import DEFAULT_LIMITS
from gossipkv.testing import SimCluster, open_sim_cluster

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
    wait_unreachable,
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


async def test_a_quorum_read_counts_one_read_per_replica(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = find_key(c, lambda o: "n1" in o)
        with trio.fail_after(30):
            await c.nodes["n1"].put(key, "v", w=3)
            before = {o: service(c.nodes[o]).storage.statistics().gets for o in owners(c, key)}
            got = await c.nodes["n1"].get(key, r=3)
        assert got.values == ["v"], f"seed={seed}: {got}"
        after = {o: service(c.nodes[o]).storage.statistics().gets for o in owners(c, key)}
        assert {o: after[o] - before[o] for o in after} == dict.fromkeys(after, 1), (
            f"seed={seed}: reads counted per replica {before} -> {after}"
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
                assert len(res.values) <= 2, (
                    f"seed={seed}: iteration {i}: {len(res.values)} siblings"
                )
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


# --- hinted handoff (§d.5) -------------------------------------------------------------------


async def test_hinted_handoff_to_a_partitioned_and_a_crashed_owner(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        # The leader n1 stays up: it coordinates (or watches) and the restarted owner seeds from it.
        key = find_key(c, lambda o: "n1" not in o[1:], prefix="hh")
        o1, o2, o3 = owners(c, key)
        rest = [n for n in names(5) if n not in (o2, o3)]
        fallbacks = [n for n in names(5) if n not in (o1, o2, o3)]
        with trio.fail_after(60):
            c.kill(o3)
            c.partition([o2], rest)
            await wait_unreachable(c, rest, [o2, o3])
            # Only one owner is reachable: W=2 can only be met with a fallback's hinted copy.
            put = await c.nodes[o1].put(key, "handed-off", w=2)
            assert put.values == ["handed-off"], f"seed={seed}: {put}"
            pending = {f: service(c.nodes[f]).hints_pending for f in fallbacks}
            assert sum(pending.values()) >= 1, f"seed={seed}: no hint stored: {pending}"
            assert await stored(c, o2, key) is None, f"seed={seed}: {o2} got it across the cut"
            assert await stored(c, o3, key) is None, f"seed={seed}: {o3} got it while down"
            c.heal()
            await c.restart(o3, seeds=["n1"])
            # No reads from here on: only handoff can bring the owners up to date.
            clock = await wait_replicas_equal(c, key, [o1, o2, o3], within=30, seed=seed)
            assert live(clock) == ["handed-off"], f"seed={seed}: {clock}"
            await c.wait_until(lambda: all(service(n).hints_pending == 0 for n in c.nodes.values()))
        delivered = sum(service(c.nodes[f]).counters.hints_delivered for f in fallbacks)
        assert delivered >= 1, f"seed={seed}"
        for f in fallbacks:
            hint_keys = [k async for k, v in c.hints[f].scan(0, 1) if v.entries]
            assert hint_keys == [], f"seed={seed}: {f} still holds hints {hint_keys}"


async def test_a_replica_refuses_a_malformed_clock_and_keeps_its_own(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "malformed"
        o1, o2, _ = owners(c, key)
        with trio.fail_after(60):
            put = await c.nodes[o1].put(key, "good", w=3)
            before = await stored(c, o2, key)
            bad_clocks = [
                b"\xff\x00",  # not CBOR
                _codec.dumps_canonical([[["a", 0, []]], []]),  # counter below one
                _codec.dumps_canonical([[["b", 1, []], ["a", 1, []]], []]),  # unsorted actors
                _codec.dumps_canonical({"not": "a clock"}),
            ]
            for raw in bad_clocks:
                with pytest.raises(InvalidClock):  # the typed error, rebuilt from the reply
                    await c.nodes[o1]._rt.pool.send_to_member(o2, ReplicaPut(key, raw, ""))
            assert await stored(c, o2, key) == before, f"seed={seed}: a bad clock changed it"
            got = await c.nodes[o2].get(key, r=3)
            assert got.values == ["good"] and got.context == put.context, f"seed={seed}: {got}"


async def test_a_coordinator_standing_in_for_an_owner_keeps_a_hint(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A put executed by a fallback (it is in the sloppy preference list for a dead owner) stores
    a hint for that owner like any other stand-in, so handoff alone brings the owner up to date."""
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = find_key(c, lambda o: "n1" not in o[1:], prefix="ch")
        o1, o2, o3 = owners(c, key)
        with trio.fail_after(60):
            c.kill(o3)
            up = [n for n in names(5) if n != o3]
            await wait_unreachable(c, up, [o3])
            targets, _ = service(c.nodes[o1]).targets(key)
            stand_in = next(m for m, hint in targets if hint == o3)
            put = await c.nodes[stand_in].put(key, "via-stand-in", w=3)
            assert put.values == ["via-stand-in"], f"seed={seed}: {put}"
            assert service(c.nodes[stand_in]).hints_pending == 1, f"seed={seed}: no hint kept"
            await c.restart(o3, seeds=["n1"])
            # No reads from here on: only handoff can bring the restarted owner up to date.
            clock = await wait_replicas_equal(c, key, [o1, o2, o3], within=30, seed=seed)
            assert live(clock) == ["via-stand-in"], f"seed={seed}: {clock}"


# --- idempotency (§d.7) ----------------------------------------------------------------------


async def test_replaying_a_replica_put_leaves_identical_state(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "replay"
        o1, o2, _ = owners(c, key)
        with trio.fail_after(60):
            first = await c.nodes[o1].put(key, "v1", w=3)
            c.partition([o2], [n for n in names(5) if n != o2])
            await c.nodes[o1].put(key, "v2", context=first.context)
            await c.nodes[o2].put(key, "x", w=1)  # concurrent, on the other side
            await trio.sleep(1.5)
            c.heal()
            await all_reachable(c)
            clock = await stored(c, o1, key)
            assert clock is not None and live(clock) == ["v2"], f"seed={seed}: {clock}"
            message = ReplicaPut(key, encode_wire_clock(clock), "")
            states = []
            for _ in range(5):
                await c.nodes[o1]._rt.pool.send_to_member(o2, message)
                states.append(await stored(c, o2, key))
        assert all(s == states[0] for s in states), f"seed={seed}: {states}"
        assert sorted(map(str, live(states[0]))) == ["v2", "x"], f"seed={seed}: {states[0]}"


async def test_client_retry_with_same_id_and_seq_returns_first_result(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "retry"
        o1, o2, o3 = owners(c, key)
        f1, f2 = [n for n in names(5) if n not in (o1, o2, o3)]
        with trio.fail_after(30):
            first = await service(c.nodes[f1]).put(key, "once", client_id="cl-7", seq=1)
            # The retry arrives through another peer (the client failed over): same coordinator.
            again = await service(c.nodes[f2]).put(key, "once", client_id="cl-7", seq=1)
            direct = await service(c.nodes[o1]).put(key, "once", client_id="cl-7", seq=1)
            assert again == first and direct == first, f"seed={seed}: {first} {again} {direct}"
            assert service(c.nodes[o1]).counters.idempotent_hits == 2, f"seed={seed}"
            clock = await wait_replicas_equal(c, key, [o1, o2, o3], within=5, seed=seed)
            assert dots(clock) == 1 and live(clock) == ["once"], f"seed={seed}: {clock}"
            # A new sequence number is a new write (a sibling: no context).
            nxt = await service(c.nodes[f1]).put(key, "twice", client_id="cl-7", seq=2)
            assert sorted(map(str, nxt.values)) == ["once", "twice"], f"seed={seed}: {nxt}"

            # A retry that reaches a different coordinator mints a second dot, but reads show
            # the value once (siblings with the same request id collapse).
            key2 = "retry-2"
            p1, p2, p3 = owners(c, key2)
            await service(c.nodes[p1]).put(key2, "dup", client_id="cl-8", seq=1)
            await service(c.nodes[p2]).put(key2, "dup", client_id="cl-8", seq=1)
            clock2 = await wait_replicas_equal(c, key2, [p1, p2, p3], within=5, seed=seed)
            got = await c.nodes[f2].get(key2)
        assert dots(clock2) == 2, f"seed={seed}: {clock2}"
        assert got.values == ["dup"], f"seed={seed}: {got}"


async def test_client_retry_over_the_wire_is_idempotent(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "retry-wire"
        own = owners(c, key)
        with trio.fail_after(30):
            msg = KvPut(key, {"cart": [1]}, None, 0, "wire-client", 41)
            sender = c.nodes[next(n for n in names(5) if n != own[0])]
            replies = [await sender._rt.pool.send_to_member(m, msg) for m in (own[0], own[0])]
            assert all(isinstance(r, KvResult) for r in replies), f"seed={seed}: {replies}"
            assert replies[0] == replies[1], f"seed={seed}: {replies}"
            clock = await wait_replicas_equal(c, key, own, within=5, seed=seed)
        assert dots(clock) == 1, f"seed={seed}: {clock}"


# --- deletes (§d.3) --------------------------------------------------------------------------


async def test_concurrent_delete_and_put_keep_both(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "del-put"
        o1, o2, o3 = owners(c, key)
        with trio.fail_after(30):
            await c.nodes[o1].put(key, "v1", w=3)
            seen = await c.nodes[o3].get(key)
            results = {}

            async def delete() -> None:
                results["delete"] = await c.nodes[o1].delete(key, context=seen.context)

            async def put() -> None:
                results["put"] = await c.nodes[o2].put(key, "v2", context=seen.context)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(delete)
                nursery.start_soon(put)
            clock = await wait_replicas_equal(c, key, [o1, o2, o3], within=5, seed=seed)
            assert live(clock) == ["v2"] and tombstones(clock) == 1, f"seed={seed}: {clock}"
            got = await c.nodes[o3].get(key, r=3)
            assert got.found and got.values == ["v2"], f"seed={seed}: {got}"
            assert covers(ctx(got.context), ctx(results["delete"].context)), (
                f"seed={seed}: the read's context misses the tombstone's dot"
            )
            # Writing back with that context resolves both: one value, no tombstone.
            resolved = await c.nodes[o3].put(key, "v3", context=got.context)
            assert resolved.values == ["v3"], f"seed={seed}: {resolved}"
            clock = await wait_replicas_equal(c, key, [o1, o2, o3], within=5, seed=seed)
        assert live(clock) == ["v3"] and tombstones(clock) == 0, f"seed={seed}: {clock}"


async def test_put_with_notfound_context_supersedes_the_tombstone(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed) as c:
        key = "del-then-put"
        own = owners(c, key)
        with trio.fail_after(30):
            first = await c.nodes["n2"].put(key, "v1")
            deleted = await c.nodes["n4"].delete(key, context=first.context)
            assert deleted.values == [], f"seed={seed}: {deleted}"
            gone = await c.nodes["n5"].get(key)
            assert not gone.found and gone.values == [] and gone.context != b"", (
                f"seed={seed}: {gone}"
            )
            clock = await wait_replicas_equal(c, key, own, within=5, seed=seed)
            assert tombstones(clock) == 1 and live(clock) == [], f"seed={seed}: {clock}"
            again = await c.nodes["n1"].put(key, "v2", context=gone.context)
            assert again.values == ["v2"], f"seed={seed}: {again}"
            clock = await wait_replicas_equal(c, key, own, within=5, seed=seed)
            got = await c.nodes["n3"].get(key)
        assert values_of(clock) == 1 and tombstones(clock) == 0, f"seed={seed}: {clock}"
        assert got.values == ["v2"], f"seed={seed}: {got}"


# --- errors ----------------------------------------------------------------------------------


async def test_typed_errors(kvseed: int, autojump_clock: trio.testing.MockClock) -> None:
    seed = kvseed
    async with kv_cluster(seed, kv=KVConfig(sloppy_quorum=False)) as c:
        with trio.fail_after(60):
            big_key = "k" * (DEFAULT_LIMITS.max_key_bytes + 1)
            with pytest.raises(KeyTooLarge):
                await c.nodes["n1"].put(big_key, "v")
            with pytest.raises(KeyTooLarge):
                await c.nodes["n1"].get(big_key)
            with pytest.raises(ValueTooLarge):
                await c.nodes["n2"].put("big", "x" * (DEFAULT_LIMITS.max_value_bytes + 1))
            for bad in (b"\xff\x00garbage", b"\x01", _codec.dumps_canonical({"a": "b"})):
                with pytest.raises(InvalidContext):
                    await c.nodes["n3"].put("ctx", "v", context=bad)
            assert await c.nodes["n3"].get("ctx") is not None
            assert not (await c.nodes["n3"].get("ctx")).found, f"seed={seed}: a bad put stored"

            key = find_key(c, lambda o: "n1" not in o[1:], prefix="q")
            o1, o2, o3 = owners(c, key)
            outsider = next(n for n in names(5) if n not in (o1, o2, o3))
            c.partition([o3], [n for n in names(5) if n != o3])
            await wait_unreachable(c, [n for n in names(5) if n != o3], [o3])
            with pytest.raises(QuorumNotReached) as put_err:
                await c.nodes[o1].put(key, "v", w=3)
            assert (put_err.value.got, put_err.value.needed) == (2, 3), f"seed={seed}"
            # The same error, forwarded from the coordinating replica over the wire.
            with pytest.raises(QuorumNotReached) as fwd_err:
                await c.nodes[outsider].put(key, "v", w=3)
            assert (fwd_err.value.got, fwd_err.value.needed) == (2, 3), f"seed={seed}"
            with pytest.raises(QuorumNotReached) as get_err:
                await c.nodes[outsider].get(key, r=3)
            assert (get_err.value.got, get_err.value.needed) == (2, 3), f"seed={seed}"
            # W=2 is still reachable.
            ok = await c.nodes[outsider].put(key, "w2", w=2)
            assert "w2" in ok.values, f"seed={seed}: {ok}"


async def test_cluster_not_ready_before_a_table_exists(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with open_sim_cluster(0, seed=seed) as c:
        # A peer still trying to join (its seed never answers) has no partition table.
        node = await c.start("lonely", seeds=["nobody"])
        with trio.fail_after(10):
            await trio.sleep(2)
            with pytest.raises(ClusterNotReady):
                await node.put("k", "v")
            with pytest.raises(ClusterNotReady):
                await node.get("k")
            with pytest.raises(ClusterNotReady):
                await node.delete("k")
            assert (await node.get("k", local=True)).found is False, f"seed={seed}"


# --- last write wins (opt-in, lossy) ---------------------------------------------------------


async def test_last_write_wins_keeps_one_newest_value_everywhere(
    kvseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = kvseed
    async with kv_cluster(seed, kv=KVConfig(last_write_wins=True, sloppy_quorum=False)) as c:
        key = "lww"
        o1, o2, o3 = owners(c, key)
        with trio.fail_after(30):
            first = await c.nodes[o1].put(key, "v1", w=3)
            # A context-less put still replaces what is stored (that is the loss LWW accepts).
            blind = await c.nodes[o2].put(key, "v2")
            assert blind.values == ["v2"], f"seed={seed}: {blind}"
            c.partition([o1], [o2], [o3])
            await c.nodes[o1].put(key, "early", context=first.context, w=1)
            await trio.sleep(0.5)
            await c.nodes[o2].put(key, "late", w=1)
            await trio.sleep(1.5)
            c.heal()
            got = await c.nodes[o3].get(key, r=3)
            assert got.values == ["late"], f"seed={seed}: {got}"
            clock = await wait_replicas_equal(c, key, [o1, o2, o3], within=5, seed=seed)
        assert live(clock) == ["late"] and values_of(clock) == 1, f"seed={seed}: {clock}"
