"""The Dynamo shopping cart on a simulated gossipkv cluster.

Alice's cart lives under one key. The network splits 3|2 and two peers, one on each side, take
"add to cart" requests. Neither side can see the other's writes, so after the heal a read returns
both versions as *siblings*. The app merges them by union (an add is never lost) and writes the
merged cart back with the read's context, which replaces exactly the siblings it saw.

It runs on ``gossipkv.testing.open_sim_cluster`` under ``trio.testing.MockClock``: deterministic,
and the simulated minutes take about a second.

Run it::

    python examples/shopping_cart.py
"""

from __future__ import annotations

import trio
import trio.testing

from gossipkv import ClusterNotReady, Node
from gossipkv.testing import SimCluster, open_sim_cluster

CART = "cart:alice"


def items_of(value: object) -> set[str]:
    return {str(item) for item in value} if isinstance(value, list) else set()


async def add_to_cart(node: Node, item: str) -> None:
    """Read-modify-write at one peer: merge what it sees, add, write back with the context."""
    got = await node.get(CART)
    cart: set[str] = set()
    for value in got.values:
        cart |= items_of(value)
    await node.put(CART, sorted(cart | {item}), context=got.context)
    print(f"  {node.name}: added {item!r}")


async def wait_ready(cluster: SimCluster) -> None:
    """Writes fail with ClusterNotReady until the partition table is published; retry."""
    for node in cluster.nodes.values():
        while True:
            try:
                await node.get("ready-probe")
                break
            except ClusterNotReady:
                await trio.sleep(0.5)


async def main() -> None:
    async with open_sim_cluster(5, seed=3) as cluster:
        with trio.fail_after(120):  # simulated seconds
            await wait_ready(cluster)
        nodes = cluster.nodes
        await add_to_cart(nodes["n1"], "book")
        await trio.sleep(2)

        cluster.partition(["n1", "n2", "n3"], ["n4", "n5"])
        print("partition: n1 n2 n3 | n4 n5")
        await trio.sleep(10)
        await add_to_cart(nodes["n2"], "pen")  # majority side
        await add_to_cart(nodes["n2"], "lamp")
        await add_to_cart(nodes["n5"], "mug")  # minority side, concurrently
        await add_to_cart(nodes["n5"], "socks")

        cluster.heal()
        print("healed")
        await trio.sleep(30)

        got = await nodes["n1"].get(CART, r=3)
        print(f"read after heal: {len(got.values)} siblings")
        for value in got.values:
            print("   sibling:", sorted(items_of(value)))
        assert len(got.values) >= 2, "expected concurrent versions as siblings"

        merged: set[str] = set()
        for value in got.values:
            merged |= items_of(value)
        await nodes["n1"].put(CART, sorted(merged), context=got.context)

        await trio.sleep(5)
        final = await nodes["n4"].get(CART, r=3)
        assert len(final.values) == 1, final.values
        assert merged == {"book", "pen", "lamp", "mug", "socks"}, merged
        print("MERGED CART:", sorted(items_of(final.values[0])))


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
