"""Review regressions (task-less data path): frames queued for a connection that cannot drain must stay bounded."""

from __future__ import annotations

import trio
import trio.testing

from gossipkv._peer import Channel

from ..sim._kvsim import find_key, kv_cluster, owners


def _queued(ch: Channel) -> int:
    """Frames (and small replica requests held for a batch) waiting for the channel's writer."""
    return ch._outbox.waiting


async def test_a_stuck_replica_connection_does_not_queue_frames_without_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connection to one replica stops draining (a SIGSTOPped peer: TCP window full), the
    other replicas keep acknowledging, so puts keep succeeding. The frames for the stuck replica
    must stay bounded (the old bounded outbox of ``max_inflight * 4`` frames, with senders timing
    out), not grow with every put for as long as the connection stays open."""
    seed = 11
    async with kv_cluster(seed) as c:
        key = find_key(c, lambda o: o[0] == "n1", prefix="bp")
        o1, _o2, o3 = owners(c, key)
        coordinator = c.nodes[o1]
        with trio.fail_after(30):
            await coordinator.put(key, "v", w=3)
        addr = coordinator._runtime().gossiper.address_of(o3)
        assert addr is not None
        ch = coordinator._rt.pool.channels[addr]

        async def stuck(payloads: list[bytes]) -> None:
            await trio.sleep_forever()

        ch.conn.send_many = stuck  # type: ignore[method-assign]
        ch.conn.send = stuck  # type: ignore[method-assign,assignment]
        peak = 0
        with trio.fail_after(600):
            context = b""
            for i in range(3000):
                context = (await coordinator.put(key, i, w=2, context=context)).context
                peak = max(peak, _queued(ch))
        bound = 4 * 64
        assert peak <= bound, f"seed={seed}: {peak} frames queued for a stuck connection"
