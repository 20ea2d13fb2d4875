"""A join storm (issue 15): 200 peers start within one second, all through one seed.

Every peer must list every other as up within a bounded number of gossip rounds: the seed answers
each joiner with a bounded digest (a rotating part of its view, never the whole state in one
reply), joiners learn the other members from it and spread the load, and the leader admits all
joiners it sees in one decision. Simulated time (autojump clock), so the bound is in rounds, not
in this machine's seconds; each seed is a different interleaving of the same storm.
"""

from __future__ import annotations

import trio
import trio.testing

from gossipkv import GossipConfig
from gossipkv.testing import SimCluster, open_sim_cluster

STORM = 200
#: Gossip rounds after the last peer started by which every peer lists every other as up (each
#: seed takes about 10: the leader admits in batches, each once the view converged).
ROUNDS = 25


def _lagging(c: SimCluster, names: list[str]) -> dict[str, int]:
    """Peers that do not yet list every peer as up, with how many they do list as up."""
    want = set(names)
    out = {}
    for name, node in c.nodes.items():
        ups = {m.name for m in node.members() if m.status == "up"}
        if ups != want:
            out[name] = len(ups & want)
    return out


async def _start_at(c: SimCluster, name: str, at: float) -> None:
    await trio.sleep_until(at)
    await c.start(name, seeds=["n1"])


async def test_peers_joining_at_once_through_one_seed_all_come_up(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    config = GossipConfig()
    interval = config.gossip_interval
    storm = STORM
    names = [f"n{i}" for i in range(1, storm + 1)]
    async with open_sim_cluster(1, seed=seed, config=config) as c:
        begin = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i, name in enumerate(names[1:]):
                nursery.start_soon(_start_at, c, name, begin + i / (storm - 1))
        last_started = trio.current_time()
        with trio.move_on_after(ROUNDS * interval):
            await c.wait_until(lambda: not _lagging(c, names), poll=1.0)
        lagging = _lagging(c, names)
        assert not lagging, (
            f"seed={seed}: {len(lagging)} of {storm} peers do not list all {storm} as up "
            f"{ROUNDS} rounds after the last start (up counts: "
            f"{dict(sorted(lagging.items())[:10])})"
        )
        rounds = (trio.current_time() - last_started) / interval
        print(f"seed={seed}: all {storm} up at every peer {rounds:.0f} rounds after the last start")
        leaders = {node.leader() for node in c.nodes.values()}
        assert leaders == {"n1"}, f"seed={seed}: leaders {leaders}"
