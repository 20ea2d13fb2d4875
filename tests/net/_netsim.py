"""Simulated clusters whose peers run with given NetworkLimits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from gossipkv import GossipConfig, NetworkLimits, Node
from gossipkv.testing import SimCluster, open_sim_cluster

from ..sim._checks import settle
from ..sim._kvsim import names, tables_agree

KEEP_MEMBERS = GossipConfig(remove_after=600.0)


@asynccontextmanager
async def limited_cluster(
    seed: int, n: int = 3, *, limits: NetworkLimits | None = None
) -> AsyncIterator[SimCluster]:
    """``n`` peers ``n1..nN`` with ``limits``, settled and holding the same partition table."""
    async with open_sim_cluster(0, seed=seed, config=KEEP_MEMBERS) as c:
        for name in names(n):
            await c.start(name, seeds=[] if name == "n1" else ["n1"], limits=limits)
        await settle(c, names(n), within=30)
        with trio.fail_after(30):
            await c.wait_until(lambda: tables_agree(c, names(n)))
        yield c


def refused(node: Node, reason: str) -> int:
    """How many times ``node`` refused something for ``reason``."""
    return node.statistics().refusals.get(reason, 0)
