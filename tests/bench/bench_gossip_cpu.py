"""CPU the membership layer costs per peer in steady state, on the simulated network.

Run: ``python tests/bench/bench_gossip_cpu.py [N ...]`` (default 100). Forms an N-peer cluster
under a MockClock (seed 1), waits until every peer lists every other as up, lets it settle for
5 simulated seconds, then measures this process's CPU over 10 simulated seconds, per peer. The
same seed does the same work, so two versions of the code compare well on a quiet machine (CPU
time still varies ~10% with what else runs); the simulator's own cost is included.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import trio
import trio.testing

from gossipkv import GossipConfig
from gossipkv.testing import open_sim_cluster


async def measure(n: int) -> dict[str, object]:
    async with open_sim_cluster(n, seed=1, config=GossipConfig()) as c:

        def all_up() -> bool:
            return all(
                sum(1 for m in node.members() if m.status == "up") == n for node in c.nodes.values()
            )

        await c.wait_until(all_up, poll=0.2)
        await trio.sleep(5.0)
        started = time.process_time()
        await trio.sleep(10.0)
        cpu = time.process_time() - started
    return {
        "peers": n,
        "cpu_s_per_10_simulated_s": round(cpu, 2),
        "percent_of_a_core_per_peer": round(100 * cpu / 10 / n, 3),
    }


def main() -> None:
    logging.disable(logging.WARNING)  # joiners waiting for admission say so, at length
    for n in [int(a) for a in sys.argv[1:]] or [100]:
        result = trio.run(measure, n, clock=trio.testing.MockClock(autojump_threshold=0))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
