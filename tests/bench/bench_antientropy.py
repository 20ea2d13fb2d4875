"""What anti-entropy costs with Merkle trees (issue 12 §4): idle CPU per peer, and finding k keys.

    python tests/bench/bench_antientropy.py [--keys 200000] [--interval 10] [--idle 60]
        [--diverge 1,10,100,1000]

Three peers in this process over loopback TCP (N=3, 64 partitions: every peer owns every
partition), each with a memory engine that, once the table is settled, gets the same ``--keys``
records straight into the engine (one shared clock, so 1M keys fit in memory). It reports:

* the time to build the trees from the record hashes at start, and of one scheduled check of
  every tree against the records;
* idle CPU: process CPU seconds per minute divided by the three peers, over ``--idle`` seconds
  of wall time with the replicas in sync and anti-entropy every ``--interval`` seconds (run it
  once with ``--interval 0`` for the baseline of gossip and the event loops alone);
* for each k of ``--diverge``: k keys changed on one peer only, then a sweep of ``compare`` over
  the 64 partitions with another peer: wall seconds until every key is repaired, and the roots,
  branches and segments exchanged;
* for comparison, what one round of the old digest exchange cost: a pass over every key to pick
  one partition's keys, and hashing those keys' clocks.

A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gossipkv
from gossipkv import _dvv
from gossipkv._dvv import Sibling
from gossipkv._node import Node
from gossipkv.storage import MemoryEngine
from gossipkv.storage._base import DEFAULT_LIMITS, encode_clock

Q = 64


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def clock(value: object, actor: str) -> Any:
    return _dvv.update(_dvv.new(None, Sibling(value, False, {})), None, actor)


async def preload(engines: list[MemoryEngine], keys: int) -> float:
    """Store the same record of every key in each engine (the trees follow, write by write),
    yielding to the peers' loops every 1,000 keys."""
    shared = clock({"v": "x" * 80}, "bench")
    data = encode_clock(shared, DEFAULT_LIMITS)
    start = time.monotonic()
    for i in range(keys):
        key = f"user:{i:09d}"
        for eng in engines:
            eng.put_nowait(key, shared, encoded=data)
        if i % 1000 == 0:
            await trio.lowlevel.checkpoint()
    return time.monotonic() - start


def old_round_cost(engine: MemoryEngine, keys: int) -> float:
    """CPU seconds of one round of the previous exchange on one side: a pass over every key to
    find one partition's keys, then blake2b of each of their clocks (and the digest)."""
    start = time.process_time()
    chosen = [f"user:{i:09d}" for i in range(keys) if _dvv.partition_of(f"user:{i:09d}", Q) == 7]
    digest = hashlib.blake2b(digest_size=16)
    for key in chosen:
        found = engine.encoded_nowait(key)
        assert found is not None
        digest.update(hashlib.blake2b(found[1], digest_size=16).digest())
    return time.process_time() - start


async def main(args: argparse.Namespace) -> None:
    engines = [MemoryEngine() for _ in range(3)]
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    kv = gossipkv.KVConfig(anti_entropy_interval=args.interval)
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i, addr in enumerate(addrs):
            node = Node(
                name=f"b{i + 1}",
                listen=addr,
                seeds=[] if i == 0 else [addrs[0]],
                kv=kv,
                storage=engines[i],
                hints=MemoryEngine(),
            )
            await nursery.start(node.run)
            nodes.append(node)
        services = [n._service() for n in nodes]

        def settled() -> bool:
            tables = [n._runtime().gossiper.table() for n in nodes]
            return all(
                t is not None and all(len(set(row)) == 3 for row in t.owners) for t in tables
            ) and all(s.transfers.filled() for s in services)

        with trio.fail_after(300):
            while not settled():  # noqa: ASYNC110 - real time, real peers
                await trio.sleep(0.2)
        # Loaded once the table is settled, so no transfer streams the keys between the peers.
        loaded = await preload(engines, args.keys)
        print(f"stored {args.keys} keys on each of 3 peers in {loaded:.1f} s")
        # Build the trees again from the record hashes, as a peer does at start.
        t0 = time.monotonic()
        c0 = cpu()
        for s in services:
            s.storage.record_hashes.attach(Q)
            await s.anti_entropy.trees(Q)
        print(
            f"trees built for 3 peers in {time.monotonic() - t0:.2f} s wall, "
            f"{cpu() - c0:.2f} s CPU ({(cpu() - c0) / 3:.2f} s per peer)"
        )
        t0, c0 = time.monotonic(), cpu()
        wrong = await services[2].anti_entropy.check_trees()
        print(
            f"scheduled tree check (every key read back and rehashed) on one peer: "
            f"{time.monotonic() - t0:.2f} s wall, {cpu() - c0:.2f} s CPU, {wrong} trees wrong"
        )
        await trio.sleep(2)
        before = [s.anti_entropy.counters.tree_roots_compared for s in services]
        branches_before = sum(s.anti_entropy.counters.branches_exchanged for s in services)
        c0, w0 = cpu(), time.monotonic()
        await trio.sleep(args.idle)
        used, wall = cpu() - c0, time.monotonic() - w0
        roots = sum(s.anti_entropy.counters.tree_roots_compared for s in services) - sum(before)
        print(
            f"idle, interval {args.interval} s: {used / wall * 60 / 3:.3f} CPU s per minute per "
            f"peer (whole process {used:.2f} s over {wall:.0f} s; {roots} root comparisons; "
            f"branches {sum(s.anti_entropy.counters.branches_exchanged for s in services) - branches_before})"
        )
        # The cost of one in-sync round alone (both sides are in this process), without the
        # gossip and event-loop noise of the idle measure.
        a0 = services[0].anti_entropy
        c0 = cpu()
        for i in range(640):
            await a0.compare(services[1 + i % 2].node_id, i % Q, Q)
        per_round = (cpu() - c0) / 640
        print(
            f"one in-sync round (root comparison, both sides): {per_round * 1e3:.2f} ms CPU; "
            f"at the {args.interval or 10:g} s interval: "
            f"{per_round * 60 / (args.interval or 10):.4f} CPU s per minute per peer"
        )
        print(
            f"old digest exchange, one round, one side: {old_round_cost(engines[0], args.keys):.3f} CPU s"
        )
        a, b = services[0], services[1]
        for k in (int(x) for x in args.diverge.split(",") if x):
            step = max(1, args.keys // k)
            changed = [f"user:{i:09d}" for i in range(0, args.keys, step)][:k]
            for key in changed:
                a.storage.put_nowait(key, clock({"k": key, "diverged": k}, f"bench-diverge-{k}"))
            counters = a.anti_entropy.counters
            start = (
                counters.tree_roots_compared,
                counters.branches_exchanged,
                counters.segments_exchanged,
                counters.keys_repaired,
            )
            w0, c0 = time.monotonic(), cpu()
            for _ in range(100):
                repaired = 0
                for p in range(Q):
                    repaired += await a.anti_entropy.compare(b.node_id, p, Q)
                if repaired == 0:
                    break
            took, used = time.monotonic() - w0, cpu() - c0
            left = [
                key
                for key in changed
                if a.storage.encoded_nowait(key) != b.storage.encoded_nowait(key)
            ]
            end = (
                counters.tree_roots_compared,
                counters.branches_exchanged,
                counters.segments_exchanged,
                counters.keys_repaired,
            )
            d = [e - s for e, s in zip(end, start, strict=True)]
            print(
                f"k={k}: found and repaired in {took:.2f} s wall ({used:.2f} s CPU), "
                f"roots {d[0]}, branches {d[1]}, segments {d[2]}, repairs {d[3]}, "
                f"still differing {len(left)}"
            )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the process (3 peers): {rss:.0f} MiB")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--diverge", default="1,10,100,1000")
    trio.run(main, parser.parse_args())
