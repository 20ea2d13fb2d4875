"""CPU the whole data path costs per operation: three peers and a client in one process.

Run: ``python tests/bench/bench_kv_cpu.py [--ops 20000] [--profile FILE]``. Starts three peers on
loopback TCP and one client in this process, writes 200 of 1,000 keys, then runs 32 concurrent
workers doing 50/50 gets (R=2) and puts (W=2) of 100-byte values, each put with the newest
context seen for its key (as ``gossipkv bench kv`` does, so keys do not pile up siblings;
``--blind`` puts without one), and reports this process's
CPU time per operation: every part of the path (client, coordinator, replicas, codec, sockets)
counted once, and none of the scheduling between processes that ``gossipkv bench kv`` also
measures. With ``--profile`` it writes a cProfile of the load (slower, for proportions only).

Use it to compare two versions of the code on the same machine in the same session (CPU time
still varies ~10% with what else runs).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import random
import time

import trio

import gossipkv


async def _all_up(nodes: list[gossipkv.Node]) -> None:
    def all_up(node: gossipkv.Node) -> bool:
        return sum(1 for m in node.members() if m.status == "up") == len(nodes)

    for node in nodes:
        await node.wait_until(all_up)


async def measure(ops: int, port: int, profile: str | None, blind: bool) -> dict[str, object]:
    addrs = [f"127.0.0.1:{port + i}" for i in range(3)]
    async with (
        gossipkv.open_node(name="a", listen=addrs[0]) as a,
        gossipkv.open_node(name="b", listen=addrs[1], seeds=[addrs[0]]) as b,
        gossipkv.open_node(name="c", listen=addrs[2], seeds=[addrs[0]]) as c,
    ):
        nodes = [a, b, c]
        for node in nodes:
            await node.wait_ready()
        await _all_up(nodes)
        await trio.sleep(3)  # the partition table settles
        async with gossipkv.open_client(addrs) as client:
            value = "x" * 100
            keys = [f"key-{i}" for i in range(1000)]
            contexts: dict[str, bytes] = {}
            for key in keys[:200]:
                contexts[key] = (await client.put(key, value, w=2)).context
            started = 0

            async def worker(index: int) -> None:
                nonlocal started
                rng = random.Random(index)
                while started < ops:
                    started += 1
                    key = rng.choice(keys)
                    if rng.random() < 0.5:
                        contexts[key] = (await client.get(key, r=2)).context
                    else:
                        context = None if blind else contexts.get(key)
                        put = await client.put(key, value, context=context, w=2)
                        contexts[key] = put.context

            profiler = cProfile.Profile() if profile else None
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            async with trio.open_nursery() as nursery:
                for index in range(32):
                    nursery.start_soon(worker, index)
            if profiler is not None and profile:
                profiler.disable()
                profiler.dump_stats(profile)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "ops": started,
        "wall_s": round(wall, 2),
        "ops_per_s": round(started / wall),
        "cpu_us_per_op": round(1e6 * cpu / started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--port", type=int, default=18_100)
    parser.add_argument("--profile", help="write a cProfile of the load here")
    parser.add_argument("--blind", action="store_true", help="put without a context (siblings)")
    args = parser.parse_args()
    gc.freeze()
    print(json.dumps(trio.run(measure, args.ops, args.port, args.profile, args.blind)))


if __name__ == "__main__":
    main()
