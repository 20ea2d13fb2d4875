"""Review regressions (task-less data path): fan-outs that are cancelled or never drained."""

from __future__ import annotations

import trio
import trio.testing

from gossipkv._node import Node

from ..sim._kvsim import find_key, kv_cluster, names, owners, service


def _channel(node: Node, member: str):  # type: ignore[no-untyped-def]
    addr = node._runtime().gossiper.address_of(member)
    assert addr is not None
    return node._rt.pool.channels.get(addr)


async def test_cancelled_get_does_not_leave_waiters_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A get cancelled by its caller while a replica is silent (partitioned, connection still
    open) must not leave that replica's request in the channel's waiting list for ever. Before
    the change each replica call ran in the service nursery under its own replica timeout."""
    seed = 7
    async with kv_cluster(seed) as c:
        key = find_key(c, lambda o: o[0] == "n1", prefix="cg")
        o1, _o2, o3 = owners(c, key)
        coordinator = c.nodes[o1]
        with trio.fail_after(30):
            await coordinator.put(key, "v", w=3)
            await coordinator.get(key, r=3)  # every replica channel is open now
        ch = _channel(coordinator, o3)
        assert ch is not None and not ch.closed
        c.partition([o3], [n for n in names(5) if n != o3])
        for _ in range(20):
            with trio.move_on_after(0.2):  # the caller gives up before the replica timeout
                await coordinator.get(key, r=3)
        await trio.sleep(30)  # far beyond the replica timeout
        c.heal()
        await trio.sleep(5)
        assert _channel(coordinator, o3) is ch and not ch.closed, "channel was replaced"
        leaked = ch.waiting
        assert leaked == 0, f"seed={seed}: {leaked} replica requests never forgotten"


async def test_cancelled_put_does_not_leave_waiters_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seed = 7
    async with kv_cluster(seed) as c:
        key = find_key(c, lambda o: o[0] == "n1", prefix="cp")
        o1, _o2, o3 = owners(c, key)
        coordinator = c.nodes[o1]
        with trio.fail_after(30):
            await coordinator.put(key, "v", w=3)
        ch = _channel(coordinator, o3)
        assert ch is not None and not ch.closed
        c.partition([o3], [n for n in names(5) if n != o3])
        for i in range(20):
            with trio.move_on_after(0.2):
                await coordinator.put(key, f"v{i}", w=3)
        await trio.sleep(30)
        c.heal()
        await trio.sleep(5)
        assert _channel(coordinator, o3) is ch and not ch.closed, "channel was replaced"
        assert ch.waiting == 0, f"{ch.waiting} replica puts never forgotten"
        assert not getattr(service(coordinator), "_expiring", ())
