"""A put is planned once (issue 14 §1): checked and routed once at each peer it reaches, on the
callback path (an engine that never waits) and the task path (one that does) alike, whether the
coordinator stores it or forwards it to a replica."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import open_client
from gossipkv._dvv import partition_of
from gossipkv.storage import MemoryEngine
from gossipkv.testing import open_sim_cluster

FOUR = ["n1", "n2", "n3", "n4"]


def plans(c: object, name: str) -> int:
    return c.nodes[name]._data_service().counters.put_plans  # type: ignore[attr-defined]


@pytest.mark.parametrize("engine", ["nowait", "waiting"])
async def test_every_put_is_planned_once_at_each_peer_it_reaches(
    seed: int, autojump_clock: trio.testing.MockClock, engine: str
) -> None:
    async with open_sim_cluster(seed=seed) as c:
        for name in FOUR:
            storage = MemoryEngine()
            if engine == "waiting":
                storage.nowait = False  # type: ignore[misc]  # a log engine's path: tasks, no callbacks
            c.storage[name] = storage
            await c.start(name, seeds=[] if name == "n1" else ["n1"])
        with trio.fail_after(60):
            await c.wait_until(
                lambda: all(
                    (t := n._runtime().gossiper.table()) is not None
                    and {m for row in t.owners for m in row} == set(FOUR)
                    for n in c.nodes.values()
                )
            )
        table = c.nodes["n1"]._runtime().gossiper.table()
        assert table is not None
        keys = [f"k{i}" for i in range(40)]
        owned = [k for k in keys if "n1" in table.owners[partition_of(k, table.q)]]
        forwarded = [k for k in keys if k not in owned]
        assert owned and forwarded, f"seed={seed}: {table.owners}"
        before = {name: plans(c, name) for name in FOUR}
        async with open_client(["n1:7400"], transport=c.net.transport("app:7400")) as client:
            for key in keys:
                await client.put(key, "v")
        for key in keys[:5]:
            await c.nodes["n1"].put(key, "w")  # the embedded API: the same planning
        grew = {name: plans(c, name) - before[name] for name in FOUR}
        where = f"seed={seed} engine={engine}: {grew}"
        assert grew["n1"] == len(keys) + 5, where
        forwarded_at_n1 = len(forwarded) + sum(1 for k in keys[:5] if k in forwarded)
        assert sum(grew.values()) == grew["n1"] + forwarded_at_n1, where
        assert c.nodes["n1"].statistics().kv_forwarded >= forwarded_at_n1, where
