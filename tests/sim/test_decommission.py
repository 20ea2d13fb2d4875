"""Decommission that finishes (issue 12): when ``leave`` returns, every key the leaver held is on
N current owners, writes only the leaver acknowledged included, and its hints are delivered.
Simulated clusters under an autojump MockClock, across seeds."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import GossipConfig, Unavailable
from gossipkv._dvv import partition_of

from ._checks import describe
from ._kvsim import find_key, kv_cluster, names, owners, service, table, tables_agree

SEEDS = [21, 22, 23]
KEEP = GossipConfig(remove_after=600.0, handoff_timeout=60.0)


@pytest.fixture(params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def dseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


async def under_n(c: object, keys: dict[str, object]) -> list[tuple[str, str]]:
    """``(key, owner)`` pairs where a current owner lacks the key's value."""
    missing = []
    nodes = c.nodes  # type: ignore[attr-defined]
    t = table(next(iter(nodes.values())))
    assert t is not None
    for key, value in keys.items():
        for owner in t.owners[partition_of(key, t.q)]:
            got = await nodes[owner].get(key, local=True)
            if value not in got.values:
                missing.append((key, owner))
    return missing


async def test_leave_returns_with_every_key_on_n_owners(
    dseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = dseed
    async with kv_cluster(seed, n=5, config=KEEP) as c:
        leaver = "n3"
        rest = [n for n in names(5) if n != leaver]
        keys: dict[str, object] = {}
        with trio.fail_after(120):
            for i in range(120):
                key = f"k{i}"
                await c.nodes[rest[i % 4]].put(key, i, w=2)
                keys[key] = i
            # Writes only the leaver acknowledged: its peers are cut off while it takes them.
            solo = [find_key(c, lambda o: leaver in o, prefix=f"solo{j}-") for j in range(5)]
            c.partition([leaver], rest)
            for key in solo:
                await c.nodes[leaver].put(key, f"only-{key}", w=1)
                keys[key] = f"only-{key}"
            c.heal()
            await c.wait_until(
                lambda: all(leaver in service(c.nodes[n])._reachable() for n in rest)
            )
            await c.nodes[leaver].leave()
            await c.wait_until(lambda: leaver not in c.nodes)
            assert tables_agree(c, rest), f"seed={seed}\n{describe(c)}"
        missing = await under_n(c, keys)
        assert missing == [], f"seed={seed}: under N when leave returned: {missing[:8]}"
        with trio.fail_after(30):
            for key, value in keys.items():
                got = await c.nodes[rest[0]].get(key, r=2)
                assert got.values == [value], f"seed={seed}: {key} {got}"


async def test_a_hint_held_by_the_leaver_is_delivered(
    dseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = dseed
    async with kv_cluster(seed, n=5, config=KEEP) as c:
        leaver, down = "n5", "n1"
        c.pause(down)
        with trio.fail_after(60):
            await c.wait_until(lambda: down not in service(c.nodes[leaver])._reachable())
            # A key the leaver stands in for the frozen owner of (it keeps the hint) ...
            key = next(
                k
                for k in (f"k{i}" for i in range(5000))
                if (leaver, down) in service(c.nodes[leaver]).targets(k)[0]
            )
            others = [o for o in owners(c, key) if o != down]
            # ... written while the frames from the leaver to the other owners are dropped (it
            # still believes them reachable): the hint is the only copy besides its own.
            c.partition([leaver], others)
            await c.nodes[leaver].put(key, "hinted", w=1)
            assert service(c.nodes[leaver]).hints_pending >= 1, f"seed={seed}: no hint kept"
            await trio.sleep(2)  # the replication attempts time out
            c.heal()
            for owner in others:
                assert (await c.nodes[owner].get(key, local=True)).values == [], f"seed={seed}"
            await c.nodes[leaver].leave()
        for owner in others:
            got = await c.nodes[owner].get(key, local=True)
            assert got.values == ["hinted"], f"seed={seed}: {owner} lacks the hinted write"
        c.resume(down)


async def test_a_leave_with_nowhere_to_hand_off_stays_up_and_says_why(
    dseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = dseed
    config = GossipConfig(remove_after=600.0, handoff_timeout=5.0)
    async with kv_cluster(seed, n=3, config=config) as c:
        with trio.fail_after(60):
            for i in range(20):
                await c.nodes["n1"].put(f"k{i}", i, w=3)
            # The other owners never pull: they are frozen, but not yet seen as down.
            c.pause("n2")
            c.pause("n3")
            with pytest.raises(Unavailable, match="hand-off incomplete"):
                await c.nodes["n1"].leave(handoff_seconds=1.0)
        assert "n1" in c.nodes and c.nodes["n1"].status == "leaving", f"seed={seed}"
        state = c.nodes["n1"].statistics().leave
        assert state["state"] == "failed" and state["reason"], f"seed={seed}: {state}"
        c.resume("n2")
        c.resume("n3")
        with trio.fail_after(60):
            await c.nodes["n1"].leave()  # again, with the others back: it finishes
            await c.wait_until(lambda: "n1" not in c.nodes)
