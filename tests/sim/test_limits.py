"""Hostile and unusual writes on simulated clusters (issue 10): every limit is checked before a
write is acknowledged, a refused write changes nothing, and no write can make a key unreadable.
Each scenario runs across several seeds under an autojump MockClock (simulated seconds)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import (
    InvalidContext,
    KVConfig,
    RecordTooLarge,
    StorageLimits,
    TooManySiblings,
    ValueTooDeep,
    _codec,
    open_client,
)
from gossipkv._dvv import join

from ._kvsim import ctx, kv_cluster, names, service, stored

SEEDS = [11, 22, 33]
NO_BACKGROUND = KVConfig(anti_entropy_interval=0, ownership_handoff_interval=0)


@pytest.fixture(params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def seed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


async def all_replicas_read(c: object, key: str, expected: list[object], seed: int) -> None:
    for name in names(3):
        got = await c.nodes[name].get(key, local=True)  # type: ignore[attr-defined]
        assert sorted(map(repr, got.values)) == sorted(map(repr, expected)), (
            f"seed={seed}: {name} holds {got.values} for {key!r}"
        )


async def test_deep_values_are_refused_and_change_nothing(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with kv_cluster(seed, n=3) as c:
        async with open_client([c.address("n2")], transport=c.net.transport("client:1")) as client:
            with trio.fail_after(60):
                await client.put("k", "kept", w=3)
                for depth in (33, 61, 62, 63):
                    with pytest.raises(ValueTooDeep):
                        await client.put("k", nested(depth))
                    with pytest.raises(ValueTooDeep):
                        await c.nodes["n1"].put("k", nested(depth))
                await all_replicas_read(c, "k", ["kept"], seed)
                # The deepest value allowed round-trips through the wire and every replica.
                await client.put("deep", nested(32), w=3)
                got = await client.get("deep", r=3)
                assert got.values == [nested(32)], f"seed={seed}"
                await all_replicas_read(c, "deep", [nested(32)], seed)
        # The client refuses what no peer could decode (beyond 48 deep) before sending; the
        # peers count the rest: 33 deep from the client, and all four through the node.
        refused = sum(service(c.nodes[n]).refusals["value_too_deep"] for n in names(3))
        assert refused == 5, f"seed={seed}: {refused} refusals counted"
        # Every replica reads back its own records after a restart.
        await c.restart("n3", seeds=["n1"])
        with trio.fail_after(30):
            await c.wait_until(lambda: c.nodes["n3"].status == "up")
            await all_replicas_read(c, "deep", [nested(32)], seed)


async def test_forged_contexts_cannot_brick_or_erase(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with kv_cluster(seed, n=3) as c:
        node = c.nodes["n1"]
        with trio.fail_after(60):
            first = await node.put("k", "first", w=3)
            actor = next(iter(ctx(first.context)))
            # Beyond the 63-bit counters a clock may hold: refused outright.
            for counter in (2**64 - 1, 2**63):
                bad = _codec.dumps_canonical([[actor, counter]])
                with pytest.raises(InvalidContext):
                    await node.put("k", "forged", context=bad)
            # Within range but beyond what any replica issued, and 10,000 made-up actors: the
            # claims are clamped to what the coordinator knows, so nothing unseen is replaced,
            # the made-up actors are never stored, and the key stays readable.
            fake = [[f"fake{i:05d}/1/0", 7] for i in range(10_000)]
            forged = _codec.dumps_canonical(sorted([[actor, 2**63 - 1], *fake]))
            second = await node.put("k", "second", context=forged, w=3)
            assert second.values == ["second"], f"seed={seed}: {second}"
            for name in names(3):
                clock = await stored(c, name, "k")
                assert clock is not None and set(join(clock)) <= {actor, *ctx(second.context)}
                assert not any(a.startswith("fake") for a in join(clock)), f"seed={seed}"
                assert max(join(clock).values()) < 100, f"seed={seed}: {join(clock)}"
            third = await c.nodes["n2"].put("k", "third", context=second.context, w=3)
            assert third.values == ["third"], f"seed={seed}: {third}"
            await all_replicas_read(c, "k", ["third"], seed)
        assert service(node).refusals["invalid_context"] == 2, f"seed={seed}"
        assert service(node).counters.contexts_clamped >= 1, f"seed={seed}"


async def test_a_context_ahead_of_the_coordinator_catches_up_first(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with kv_cluster(seed, n=3, kv=NO_BACKGROUND) as c:
        with trio.fail_after(60):
            await c.nodes["n1"].put("k", "v1", w=3)
            c.partition(["n1", "n2"], ["n3"])
            v2 = await c.nodes["n1"].put("k", "v2", context=(await c.nodes["n1"].get("k")).context)
            c.heal()
            await c.wait_until(lambda: "n1" in service(c.nodes["n3"])._reachable())
            seen = await c.nodes["n1"].get("k", local=True)
            assert seen.values == ["v2"] and seen.context == v2.context, f"seed={seed}"
            # n3 still holds only v1: it fetches what the context claims before honouring it.
            assert (await c.nodes["n3"].get("k", local=True)).values == ["v1"], f"seed={seed}"
            put = await c.nodes["n3"].put("k", "v3", context=seen.context)
            assert put.values == ["v3"], f"seed={seed}: {put}"
            assert service(c.nodes["n3"]).counters.context_catch_ups == 1, f"seed={seed}"
            got = await c.nodes["n1"].get("k", r=3)
            assert got.values == ["v3"], f"seed={seed}: {got}"


async def test_a_context_the_coordinator_cannot_check_costs_a_sibling_not_a_value(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with kv_cluster(seed, n=3, kv=NO_BACKGROUND) as c:
        with trio.fail_after(60):
            await c.nodes["n1"].put("k", "v1", w=3)
            c.partition(["n1", "n2"], ["n3"])
            v2 = await c.nodes["n1"].put("k", "v2", context=(await c.nodes["n1"].get("k")).context)
            # n3, cut off, takes a write whose context saw v2: it cannot fetch v2, so it only
            # replaces what it holds (v1), and v2 survives as a sibling after the heal.
            put = await c.nodes["n3"].put("k", "v3", context=v2.context, w=1)
            assert put.values == ["v3"], f"seed={seed}: {put}"
            c.heal()
            await c.wait_until(lambda: "n1" in service(c.nodes["n3"])._reachable())
            got = await c.nodes["n1"].get("k", r=3)
            assert sorted(got.values) == ["v2", "v3"], f"seed={seed}: {got}"  # type: ignore[type-var]


SMALL = StorageLimits(max_value_bytes=10_000, max_record_bytes=40_000, max_siblings=10)


async def test_a_key_cannot_outgrow_its_record_limit(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with kv_cluster(seed, n=3, storage_limits=SMALL) as c:
        with trio.fail_after(120):
            acked: list[object] = []
            refused = 0
            for i in range(12):
                value = f"{i:02d}" + "x" * 9_000
                try:
                    await c.nodes[names(3)[i % 3]].put("big", value, w=3)
                except RecordTooLarge:
                    refused += 1
                else:
                    acked.append(value)
            assert 3 <= len(acked) <= 5 and refused == 12 - len(acked), f"seed={seed}: {refused}"
            got = await c.nodes["n2"].get("big", r=3)
            assert sorted(got.values) == sorted(acked) and got.more == 0, f"seed={seed}"  # type: ignore[type-var]
            # Resolving makes room again.
            await c.nodes["n2"].put("big", "small", context=got.context, w=3)
            assert (await c.nodes["n1"].get("big", r=3)).values == ["small"], f"seed={seed}"


async def test_a_sibling_storm_reads_at_most_the_cap_and_loses_nothing(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with kv_cluster(seed, n=3, storage_limits=SMALL, kv=NO_BACKGROUND) as c:
        acked: set[str] = set()
        # Cut every replica off from the others: each coordinator takes blind writes up to the
        # cap on its own, so the merged state holds three times the cap.
        c.partition(["n1"], ["n2"], ["n3"])
        with trio.fail_after(120):
            for name in names(3):
                for i in range(12):
                    value = f"{name}-{i}"
                    try:
                        await c.nodes[name].put("storm", value, w=1)
                    except TooManySiblings:
                        continue
                    acked.add(value)
            assert len(acked) == 30, f"seed={seed}: {len(acked)} acknowledged"
            c.heal()
            await c.wait_until(
                lambda: all(service(c.nodes[n])._reachable() >= set(names(3)) for n in names(3))
            )
            seen: set[str] = set()
            for _ in range(10):
                got = await c.nodes["n2"].get("storm", r=3)
                assert len(got.values) <= SMALL.max_siblings, f"seed={seed}: {len(got.values)}"
                seen.update(v for v in got.values if isinstance(v, str) and "-" in v)
                if got.more == 0:
                    break
                # Resolve what was shown; the rest comes into view on the next read.
                await c.nodes["n2"].put("storm", "resolved", context=got.context, w=3)
            assert seen == acked, f"seed={seed}: lost {sorted(acked - seen)}"


async def test_coordinated_work_is_admitted_by_the_bytes_it_holds(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    budget = 256 * 1024
    kv = KVConfig(max_inflight_bytes=budget, replica_timeout=1.0)
    async with kv_cluster(seed, n=3, kv=kv) as c:
        node = c.nodes["n1"]
        admission = service(node).admission
        peak = 0

        def sample() -> None:
            nonlocal peak
            peak = max(peak, admission.used)

        with trio.fail_after(120):
            await node.put("big", "x" * 60_000, w=3)
            one = 4 * 60_000  # N+1 copies of what a replica stores for the key, at least
            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(node.get, "big")
                for _ in range(200):
                    sample()
                    await trio.sleep(0.001)
            # A replica that does not answer still gives its reservation back (by timeout).
            c.pause("n3")
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(node.put, f"p{i}", "y" * 1_000)
            c.resume("n3")
            await c.wait_until(
                lambda: all(service(n).admission.used == 0 for n in c.nodes.values())
            )
        assert admission.waits > 0, f"seed={seed}: the budget never pushed back"
        assert peak <= budget + one, f"seed={seed}: {peak} bytes reserved at once"
