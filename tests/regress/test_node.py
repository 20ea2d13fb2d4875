"""Review regressions (task-less data path): a node that left on its own is still closed gracefully by open_node."""

from __future__ import annotations

import trio

from gossipkv import GossipConfig, open_node

FAST = GossipConfig(gossip_interval=0.05, leave_timeout=0.5)


async def test_open_node_exit_after_an_explicit_leave() -> None:
    """``leave`` documents: calling it again waits for the first call. ``open_node``'s exit calls
    it again after the body left; with ``_stopped`` that second call raises NodeClosedError as
    soon as the body ran one checkpoint after its own leave."""
    with trio.fail_after(20):
        async with open_node(name="solo", listen="127.0.0.1:0", config=FAST) as node:
            await node.leave(force=True)
            await trio.sleep(0.1)  # anything that yields: run() finishes meanwhile


async def test_leave_called_twice() -> None:
    with trio.fail_after(20):
        async with open_node(name="solo", listen="127.0.0.1:0", config=FAST) as node:
            await node.leave(force=True)
            await trio.sleep(0.1)
            await node.leave(
                force=True
            )  # "Calling it again ... waits for the first call to finish"
