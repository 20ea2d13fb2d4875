"""State Watch on simulated clusters: ``Node.watch`` at one replica and ``Client.watch`` across
every member (deduplicated), all under an autojump MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import Change, open_client

from ._kvsim import find_key, kv_cluster, names, owners, stored

WATCH_SEEDS = [11, 22, 33]


@pytest.fixture(params=WATCH_SEEDS, ids=[f"seed{s}" for s in WATCH_SEEDS])
def wseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


async def drain(changes: trio.MemoryReceiveChannel[Change], settle: float) -> list[Change]:
    """Everything that arrives until ``settle`` simulated seconds pass without a change."""
    out: list[Change] = []
    while True:
        with trio.move_on_after(settle):
            out.append(await changes.receive())
            continue
        return out


async def test_node_watch_sees_prefix_only(
    wseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = wseed
    async with kv_cluster(seed, n=3) as c:  # N=3 of 3: every node is a replica of every key
        node = c.nodes["n1"]
        async with node.watch("user:") as changes:
            with trio.fail_after(30):
                put1 = await node.put("user:1", "alice")
                await node.put("other:1", "nope")
                put2 = await node.put("user:2", {"name": "bob"})
                first = await changes.receive()
                second = await changes.receive()
            assert first == Change("user:1", ["alice"], put1.context), f"seed={seed}"
            assert second == Change("user:2", [{"name": "bob"}], put2.context), f"seed={seed}"
            assert await drain(changes, 2.0) == [], f"seed={seed}"


async def test_watch_at_another_peer_sees_puts_and_deletes(
    wseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = wseed
    async with kv_cluster(seed, n=5) as c:
        key = find_key(c, lambda o: "n5" in o and "n2" not in o, prefix="cart:")
        async with c.nodes["n5"].watch("cart:") as changes:
            with trio.fail_after(30):
                put = await c.nodes["n2"].put(key, ["apple"])  # n2 is no replica: forwarded
                seen = await changes.receive()
                assert seen == Change(key, [["apple"]], put.context), f"seed={seed}: {seen}"
                gone = await c.nodes["n2"].delete(key, context=put.context)
                deleted = await changes.receive()
            assert deleted.key == key and deleted.values == [], f"seed={seed}: {deleted}"
            assert deleted.context == gone.context, f"seed={seed}"


async def test_client_watch_merges_every_replica_once(
    wseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = wseed
    async with (
        kv_cluster(seed, n=5) as c,
        open_client([c.address("n1")], transport=c.net.transport("client:1")) as client,
    ):
        with trio.fail_after(30):
            async with client.watch("user:") as changes:
                puts = {}
                for i in range(3):
                    key = f"user:{i}"
                    puts[key] = await client.put(key, f"v{i}")
                await client.put("skip:1", "not watched")
                got = await drain(changes, 3.0)
        # Each key was stored by all 3 of its replicas, yet every change arrives once.
        for key in puts:
            holders = [n for n in names(5) if await stored(c, n, key) is not None]
            assert sorted(holders) == sorted(owners(c, key)), f"seed={seed}: {key} {holders}"
        assert sorted((ch.key, ch.context) for ch in got) == sorted(
            (k, p.context) for k, p in puts.items()
        ), f"seed={seed}: {got}"
        assert all(ch.values == puts[ch.key].values for ch in got), f"seed={seed}"
        assert client.watch_dropped == 0


async def test_slow_node_watcher_loses_newest_and_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with kv_cluster(7, n=3) as c:
        node = c.nodes["n1"]
        async with node.watch("k", max_buffer=2) as changes:
            with trio.fail_after(30):
                for i in range(4):
                    await node.put(f"k{i}", i)
            got = await drain(changes, 1.0)
        assert [ch.key for ch in got] == ["k0", "k1"]
        assert node.statistics().dropped_frames.get("watch_overflow") == 2
