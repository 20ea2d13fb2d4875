"""Watch keys change (State Watch) on a simulated gossipkv cluster.

Peer n1 subscribes with ``node.watch("orders:")`` while peer n3 writes, updates and deletes order
keys (and one unrelated key, which the watch does not report). A node reports changes to the keys
it holds a replica of; with three peers and three replicas per key, n1 holds them all.

It runs on ``gossipkv.testing.open_sim_cluster`` under ``trio.testing.MockClock``: deterministic and
fast. Run it::

    python examples/watch_keys.py
"""

from __future__ import annotations

import trio
import trio.testing

from gossipkv import Change, ClusterNotReady, Node
from gossipkv.testing import SimCluster, open_sim_cluster


async def wait_ready(cluster: SimCluster) -> None:
    """Writes fail with ClusterNotReady until the partition table is published; retry."""
    for node in cluster.nodes.values():
        while True:
            try:
                await node.get("ready-probe")
                break
            except ClusterNotReady:
                await trio.sleep(0.5)


async def writer(node: Node) -> None:
    await node.put("orders:1", {"item": "book", "qty": 1})
    await trio.sleep(1)
    await node.put("users:bob", {"name": "Bob"})  # not under the watched prefix
    await trio.sleep(1)
    await node.put("orders:2", {"item": "pen", "qty": 3})
    await trio.sleep(1)
    got = await node.get("orders:1")
    await node.put("orders:1", {"item": "book", "qty": 2}, context=got.context)
    await trio.sleep(1)
    got = await node.get("orders:2")
    await node.delete("orders:2", context=got.context)
    await trio.sleep(2)


async def main() -> None:
    seen: list[Change] = []
    async with open_sim_cluster(3, seed=5) as cluster:
        with trio.fail_after(120):  # simulated seconds
            await wait_ready(cluster)
        watcher, other = cluster.nodes["n1"], cluster.nodes["n3"]
        async with watcher.watch("orders:") as changes, trio.open_nursery() as nursery:

            async def show() -> None:
                last: dict[str, bytes] = {}
                async for change in changes:
                    if last.get(change.key) == change.context:
                        continue  # the same stored state reported again (e.g. by a repair)
                    last[change.key] = change.context
                    seen.append(change)
                    state = change.values if change.values else "(deleted)"
                    print(f"  n1 saw {change.key} -> {state}")

            nursery.start_soon(show)
            print("n1 watches 'orders:'; n3 writes")
            await writer(other)
            nursery.cancel_scope.cancel()

    keys = {c.key for c in seen}
    assert keys == {"orders:1", "orders:2"}, keys
    assert any(c.key == "orders:2" and not c.values for c in seen), "delete not seen"
    print(f"WATCH SAW {len(seen)} CHANGES to orders:* (users:bob not reported)")


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
