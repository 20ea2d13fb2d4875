"""Embed a real gossipkv node in your own Trio app.

The app runs a peer in its own nursery (``await nursery.start(node.run)``) on 127.0.0.1 with port 0
(the OS picks a free port; ``node.address`` tells which), serves a few puts and gets through the
node's API, then leaves the cluster gracefully. It is a one-peer cluster, so it is configured with
one replica per key and quorums of one; with more peers, pass their addresses as ``seeds``.

This uses real TCP and the real clock. Run it::

    python examples/embedded_node.py
"""

from __future__ import annotations

import trio

from gossipkv import ClusterNotReady, GossipConfig, KVConfig, Node


async def put_when_ready(node: Node, key: str, value: object) -> None:
    """A new cluster refuses writes until its partition table exists; the error is retryable."""
    while True:
        try:
            await node.put(key, value)
            return
        except ClusterNotReady:
            await trio.sleep(0.1)


async def app(node: Node) -> None:
    await put_when_ready(node, "greeting", "hello")
    await node.put("config:max_users", 100)
    await node.put("config:theme", {"dark": True, "accent": "teal"})
    for key in ("greeting", "config:max_users", "config:theme", "missing"):
        got = await node.get(key)
        print(f"  get {key!r}: found={got.found} values={got.values}")

    got = await node.get("config:max_users")
    await node.put("config:max_users", 250, context=got.context)  # replace what we read
    print("  after update:", (await node.get("config:max_users")).values)

    await node.delete("greeting", context=(await node.get("greeting")).context)
    print("  after delete: found =", (await node.get("greeting")).found)


async def main() -> None:
    node = Node(
        name="embedded",
        listen="127.0.0.1:0",
        config=GossipConfig(replicas=1, leave_timeout=1.0),
        kv=KVConfig(r=1, w=1),
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            print(f"node {node.name} serving at {node.address}")
            await app(node)
            # A lone node has no one to hand its data to: leaving must be forced (a node
            # in a cluster calls leave() and hands its partitions off first).
            await node.leave(force=True)  # run() returns and the nursery closes
    print("EMBEDDED NODE DONE: node left, app exiting")


if __name__ == "__main__":
    trio.run(main)
