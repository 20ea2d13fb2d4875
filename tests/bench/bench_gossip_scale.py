"""Simulated membership at scale: a join storm, dissemination, bytes, detection, a crash, a heal.

Run: ``python tests/bench/bench_gossip_scale.py [-n 1000] [--seed 1] [--digest-bytes 4096]``.
Not a test: it prints figures (one JSON object), never a verdict. Everything runs on the
simulated network under a MockClock, so times are simulated seconds (and gossip rounds of
``gossip_interval``), independent of this machine's speed; the wall time it took is printed too.

Scenario: ``n1`` starts a cluster and the other ``n - 1`` peers start within one second, all
seeded by ``n1`` (the join storm); then, once every peer lists every other as up:
1. steady-state gossip bytes per peer per round;
2. a metadata change on one peer: rounds until every peer sees it (dissemination);
3. one peer crashed: seconds until every survivor sees it down (detection);
4. 10 % of the peers crashed at once: seconds until every survivor sees all of them down;
5. the survivors split 50|50 until each side sees the other down, then healed: seconds until
   every survivor sees every other survivor up and reachable again.

Every peer is a whole :class:`gossipkv.Node` (membership, data path, anti-entropy, handoff), as
in the tests. ``wall_s_by_phase`` says how long each step took on this machine (``join_storm``
includes starting the peers, ``steady`` the two quiet seconds before the bytes are counted).

Python's garbage collector is made lazier here (``gc.set_threshold``, ``gc.freeze`` once the
cluster is up): N simulated peers in one process hold N views of N members, O(N^2) objects that
every full collection walks, which at 1,000 peers took most of the run. That is a cost of
simulating N peers in one process, not of a peer (a real one holds one view); it changes no
figure, since everything is timed on the simulated clock.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable

import trio
import trio.testing

from gossipkv import GossipConfig
from gossipkv.testing import SimCluster, open_sim_cluster


def _gossiper(c: SimCluster, name: str):  # type: ignore[no-untyped-def]
    # The bench reads each peer's membership state directly: building N member tables of N rows
    # every poll would cost more than the simulation itself at N=1000.
    return c.nodes[name]._runtime().gossiper


def _sees_up(c: SimCluster, name: str, others: list[str]) -> bool:
    g = _gossiper(c, name)
    for other in others:
        if other == name:
            continue
        ns = g._table.namespaces.get(other)
        peer = g._table.peers.get(other)
        if ns is None or peer is None or peer.liveness != "alive" or ns.get("status") != "up":
            return False
    return True


def _sees_down(c: SimCluster, name: str, gone: list[str]) -> bool:
    g = _gossiper(c, name)
    return all(
        (peer := g._table.peers.get(x)) is not None and peer.liveness == "down" for x in gone
    )


async def _until(c: SimCluster, predicate: Callable[[], bool], poll: float) -> float:
    start = trio.current_time()
    await c.wait_until(predicate, poll=poll)
    return trio.current_time() - start


async def scenario(n: int, seed: int, config: GossipConfig) -> dict[str, object]:
    interval = config.gossip_interval
    out: dict[str, object] = {"peers": n, "seed": seed, "gossip_interval": interval}
    out["max_digest_bytes"] = config.max_digest_bytes
    out["fanout"] = config.fanout
    out["probe_interval"] = config.probe_interval
    walls: dict[str, float] = {}
    last = [time.perf_counter()]
    reported = [len(out)]

    def phase(name: str) -> None:
        now = time.perf_counter()
        walls[name] = round(now - last[0], 1)
        last[0] = now
        # Progress, with the figures this phase added: a long run cut short still told them.
        figures = dict(list(out.items())[reported[0] :])
        reported[0] = len(out)
        print(
            f"{name}: {walls[name]} s wall, at {trio.current_time():.1f} simulated s: "
            f"{json.dumps(figures)}",
            file=sys.stderr,
            flush=True,
        )

    async with open_sim_cluster(0, seed=seed, config=config) as c:
        await c.start("n1")
        names = [f"n{i}" for i in range(1, n + 1)]
        storm_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i, name in enumerate(names[1:]):
                nursery.start_soon(_start_at, c, name, storm_at + i / max(1, n - 1))
        alive = list(names)

        def all_up() -> bool:
            return all(_sees_up(c, x, alive) for x in alive)

        await _until(c, all_up, interval)
        out["join_storm_all_up_s"] = round(trio.current_time() - storm_at, 2)
        out["join_storm_all_up_rounds"] = round((trio.current_time() - storm_at) / interval, 1)
        phase("join_storm")
        gc.freeze()  # the views built so far are long-lived: no full collection walks them again
        await trio.sleep(2.0)

        # 1. Steady-state traffic.
        before = {x: c.nodes[x].statistics().bytes_out for x in alive}
        t0 = trio.current_time()
        await trio.sleep(4.0)
        rounds = (trio.current_time() - t0) / interval
        sent = sorted((c.nodes[x].statistics().bytes_out - before[x]) / rounds for x in alive)
        out["bytes_per_peer_per_round_mean"] = round(sum(sent) / len(sent))
        out["bytes_per_peer_per_round_max"] = round(sent[-1])
        phase("steady")

        # 2. Dissemination of one change.
        c.nodes[names[-1]].set_metadata("probe", "1")

        def everyone_sees() -> bool:
            return all(
                _gossiper(c, x)._table.namespaces[names[-1]].get("meta:probe") == "1" for x in alive
            )

        spread = await _until(c, everyone_sees, interval / 4)
        out["dissemination_rounds"] = round(spread / interval, 1)
        out["log2_n"] = round(math.log2(n), 1)
        phase("dissemination")

        # 3. One crash.
        rng = random.Random(seed)
        victim = rng.choice(alive[1:])
        c.kill(victim)
        alive.remove(victim)
        out["crash_1_down_at_all_s"] = round(
            await _until(c, lambda: all(_sees_down(c, x, [victim]) for x in alive), 0.1), 2
        )
        phase("crash_1")

        # 4. 10 % crash at once.
        crashed = rng.sample(alive[1:], max(1, len(alive) // 10))
        for x in crashed:
            c.kill(x)
            alive.remove(x)
        out["crash_10pct"] = len(crashed)
        out["crash_10pct_down_at_all_s"] = round(
            await _until(c, lambda: all(_sees_down(c, x, crashed) for x in alive), 0.2), 2
        )
        phase("crash_10pct")
        await trio.sleep(2.0)

        # 5. A 50|50 partition, held until each side sees the other down, then healed.
        half = len(alive) // 2
        left, right = alive[:half], alive[half:]
        c.partition(left, right)
        out["partition_sides_down_s"] = round(
            await _until(
                c,
                lambda: (
                    all(_sees_down(c, x, right) for x in left)
                    and all(_sees_down(c, x, left) for x in right)
                ),
                0.5,
            ),
            2,
        )
        phase("partition")
        c.heal()
        out["partition_heal_all_up_s"] = round(
            await _until(c, lambda: all(_sees_up(c, x, alive) for x in alive), 0.2), 2
        )
        phase("heal")
    out["wall_s_by_phase"] = walls
    return out


async def _start_at(c: SimCluster, name: str, at: float) -> None:
    await trio.sleep_until(at)
    await c.start(name, seeds=["n1"])


def main() -> None:
    logging.disable(logging.WARNING)  # joiners waiting for admission say so, at length
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    defaults = GossipConfig()
    parser.add_argument("--digest-bytes", type=int, default=defaults.max_digest_bytes)
    parser.add_argument("--fanout", type=int, default=defaults.fanout)
    parser.add_argument("--probe-interval", type=float, default=defaults.probe_interval)
    args = parser.parse_args()
    config = GossipConfig(
        max_digest_bytes=args.digest_bytes,
        fanout=args.fanout,
        probe_interval=args.probe_interval,
        remove_after=3600.0,
    )
    # Fewer, cheaper collections (see the module docstring): the young generation is collected
    # every 50,000 allocations instead of 700, a full collection a hundred times less often.
    gc.set_threshold(50_000, 20, 100)
    started = time.perf_counter()
    result = trio.run(
        scenario, args.n, args.seed, config, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
