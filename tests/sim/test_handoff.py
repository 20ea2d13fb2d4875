"""Ownership handoff on simulated clusters: when the partition table changes, the keys a peer holds
for partitions it no longer owns reach the new owners (no reads, no anti-entropy, no hints).

Every duration is simulated seconds (autojump MockClock); every assertion names its seed.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import KVConfig

from ._kvsim import kv_cluster, names, table

HANDOFF_SEEDS = [11, 22, 33]


@pytest.fixture(params=HANDOFF_SEEDS, ids=[f"seed{s}" for s in HANDOFF_SEEDS])
def hseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


async def test_a_killed_member_that_restarts_keeps_its_partitions(
    hseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A restart under the same name (a new generation, first ``joining``) within
    ``remove_after`` publishes no new table: no replica moves (DESIGN §7, few moves on change)."""
    seed = hseed
    kv = KVConfig(anti_entropy_interval=0)
    async with kv_cluster(seed, kv=kv) as c:
        before = table(c.nodes["n1"])
        assert before is not None, f"seed={seed}"
        with trio.fail_after(120):
            c.kill("n3")
            await trio.sleep(5)
            await c.restart("n3", seeds=["n1"], kv=kv)
            await c.wait_until(lambda: c.nodes["n3"].status == "up")
            await trio.sleep(20)
        for name in names(5):
            after = table(c.nodes[name])
            assert after is not None and after.owners == before.owners, (
                f"seed={seed}: {name} holds another table after the restart: "
                f"{before.epoch} -> {after and after.epoch}"
            )
