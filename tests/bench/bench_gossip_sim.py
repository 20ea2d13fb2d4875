"""Simulated membership benchmark: dissemination rounds and gossip bytes per peer per round.

Run: ``python tests/bench/bench_gossip_sim.py [N ...]`` (default 50 100 200). Everything runs on the
simulated network under a MockClock, so the numbers are in gossip rounds and bytes, not seconds of
this machine. Prints one JSON line per cluster size.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time

import trio
import trio.testing

from gossipkv import GossipConfig
from gossipkv.testing import open_sim_cluster


async def measure(n: int, seed: int = 1) -> dict[str, object]:
    config = GossipConfig()
    interval = config.gossip_interval
    async with open_sim_cluster(n, seed=seed, config=config) as c:
        names = [f"n{i}" for i in range(1, n + 1)]

        def all_up() -> bool:
            return all(
                sum(1 for m in node.members() if m.status == "up") == n for node in c.nodes.values()
            )

        await c.wait_until(all_up, poll=interval)
        converged_at = trio.current_time()
        await trio.sleep(5.0)
        # Steady-state traffic over 10 s.
        before = {name: c.nodes[name].statistics() for name in names}
        t0 = trio.current_time()
        await trio.sleep(10.0)
        after = {name: c.nodes[name].statistics() for name in names}
        rounds = (trio.current_time() - t0) / interval
        sent = [after[x].bytes_out - before[x].bytes_out for x in names]
        per_round = [b / rounds for b in sent]
        # A metadata change on one peer: rounds until every peer sees it.
        changed_at = trio.current_time()
        c.nodes[names[-1]].set_metadata("probe", "1")

        def everyone_sees() -> bool:
            return all(
                any(m.name == names[-1] and m.metadata.get("probe") == "1" for m in node.members())
                for node in c.nodes.values()
            )

        await c.wait_until(everyone_sees, poll=interval / 4)
        spread = (trio.current_time() - changed_at) / interval
        return {
            "peers": n,
            "join_all_up_virtual_s": round(converged_at, 2),
            "metadata_rounds_to_all": round(spread, 1),
            "two_log2_n": round(2 * math.log2(n), 1),
            "bytes_per_peer_per_round_mean": round(sum(per_round) / n),
            "bytes_per_peer_per_round_max": round(max(per_round)),
            "delta_budget_bytes": config.max_delta_bytes,
        }


def main() -> None:
    logging.disable(logging.WARNING)  # joiners waiting for admission say so, at length
    sizes = [int(a) for a in sys.argv[1:]] or [50, 100, 200]
    for n in sizes:
        started = time.perf_counter()
        result = trio.run(measure, n, clock=trio.testing.MockClock(autojump_threshold=0))
        result["real_seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
