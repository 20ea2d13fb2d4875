"""Prove an application invariant under a simulated network partition.

The app keeps a set (for example "users who liked a post") under one key. Every writer reads the
key, merges all siblings by union, adds its element and writes back with the read's context. The
invariant: no add that the cluster acknowledged is ever lost, even when the five peers are split
3|2, both sides keep taking writes, and the network heals afterwards.

Everything runs on ``gossipkv.testing.open_sim_cluster`` under ``trio.testing.MockClock``, so the
minutes of simulated gossip take well under a second of real time and every run is identical.

Run it::

    python examples/partition_test.py
"""

from __future__ import annotations

import trio
import trio.testing

from gossipkv import ClusterNotReady, GossipKVError, Node
from gossipkv.testing import SimCluster, open_sim_cluster

KEY = "likes:post-1"


def union(values: list[object]) -> set[str]:
    """Merge siblings: each sibling is a list of members; the merged set is their union."""
    merged: set[str] = set()
    for value in values:
        if isinstance(value, list):
            merged.update(str(v) for v in value)
    return merged


async def add(node: Node, element: str) -> bool:
    """Read, merge, add, write back with the context. True when the write was acknowledged."""
    try:
        got = await node.get(KEY)
        await node.put(KEY, sorted(union(got.values) | {element}), context=got.context)
    except GossipKVError:
        return False  # not acknowledged: the app may not count on it
    return True


async def wait_ready(cluster: SimCluster) -> None:
    """A fresh cluster refuses writes until the leader has published the partition table."""
    for node in cluster.nodes.values():
        while True:
            try:
                await node.get("ready-probe")
                break
            except ClusterNotReady:
                await trio.sleep(0.5)


async def read_all(node: Node) -> set[str]:
    got = await node.get(KEY, r=3)
    return union(got.values)


async def main() -> None:
    acknowledged: set[str] = set()
    async with open_sim_cluster(5, seed=7) as cluster:
        with trio.fail_after(120):  # simulated seconds
            await wait_ready(cluster)
        print("cluster of 5 ready:", sorted(cluster.nodes))

        for i in range(3):
            if await add(cluster.nodes[f"n{i + 1}"], f"before-{i}"):
                acknowledged.add(f"before-{i}")

        majority, minority = ["n1", "n2", "n3"], ["n4", "n5"]
        cluster.partition(majority, minority)
        print("partitioned:", majority, "|", minority)
        await trio.sleep(10)  # let each side notice the other is down

        for i in range(6):
            side = majority if i % 2 == 0 else minority
            name = side[(i // 2) % len(side)]
            ok = await add(cluster.nodes[name], f"split-{i}@{name}")
            if ok:
                acknowledged.add(f"split-{i}@{name}")
            print(f"  add split-{i} at {name}: {'acknowledged' if ok else 'refused'}")
            await trio.sleep(0.5)

        cluster.heal()
        print("healed; waiting for anti-entropy")
        await trio.sleep(30)

        # Every peer must now see every acknowledged add (siblings merged by union).
        for name, node in sorted(cluster.nodes.items()):
            seen = await read_all(node)
            missing = acknowledged - seen
            assert not missing, f"{name} lost acknowledged adds: {sorted(missing)}"
        final = await read_all(cluster.nodes["n1"])
        print(f"acknowledged adds: {len(acknowledged)}; merged set: {sorted(final)}")
        print("INVARIANT HOLDS: no acknowledged add was lost across the partition")


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
