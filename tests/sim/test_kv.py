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

from ._kvsim import (
    covers,
    ctx,
    dots,
    find_key,
    kv_cluster,
    live,
    names,
    owners,
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
