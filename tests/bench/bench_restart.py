"""How long a whole cluster takes to serve again after a power cut (issue 11), real processes.

    python tests/bench/bench_restart.py [--peers 3] [--keys 200] [--runs 3]

Starts N peers with data dirs on loopback, writes keys at W=2, SIGKILLs every peer at once,
starts them again in a shuffled order (each seeding every other), and reports the seconds from
the last start until (a) every peer lists every other up with the same leader as before, and
(b) a quorum read (R=2) of every key and a quorum write (W=2) succeed through one peer.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gossipkv
from tests.proc._peers import Peers, free_ports, members


async def wait_for(check: Any, within: float) -> float:
    start = time.monotonic()  # wall time on purpose: this measures real processes
    with trio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - polling real processes
            await trio.sleep(0.05)
    return time.monotonic() - start


async def one_run(n: int, keys: int, seed: int) -> tuple[float, float]:
    names = [f"r{i}" for i in range(1, n + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        peers = Peers(Path(tmp))
        try:
            ports = dict(zip(names, free_ports(n), strict=True))
            peers.start(names[0], ports[names[0]], data_dir=f"{tmp}/{names[0]}")
            for name in names[1:]:
                peers.start(name, ports[name], seeds=[names[0]], data_dir=f"{tmp}/{name}")

            async def formed() -> Any:
                docs = [await members(peers.addr[x]) for x in names]
                if any(d is None for d in docs):
                    return None
                ok = all(
                    sorted(m["name"] for m in d["members"] if m["status"] == "up") == names
                    for d in docs
                )
                return docs if ok else None

            await wait_for(formed, 60)
            leader = (await members(peers.addr[names[0]]) or {})["leader"]
            async with gossipkv.open_client([peers.addr[names[1]]]) as client:
                for _ in range(300):  # until the table spans every peer (N=3 rows)
                    try:
                        await client.put("probe", 0, w=min(3, n))
                        break
                    except (gossipkv.ClusterNotReady, gossipkv.RemoteError):
                        await trio.sleep(0.1)
                for i in range(keys):
                    await client.put(f"k{i}", i, w=2)
            for name in names:
                peers.signal(name, signal.SIGKILL)
            for name in names:
                peers.procs[name].wait(timeout=10)
            order = names[:]
            random.Random(seed).shuffle(order)
            for name in order:
                others = [x for x in names if x != name]
                peers.start(name, ports[name], seeds=others, data_dir=f"{tmp}/{name}")
            started = time.monotonic()

            async def same_leader() -> bool:
                docs = await formed()
                return bool(docs) and all(d["leader"] == leader for d in docs)

            async def serving() -> bool:
                try:
                    async with gossipkv.open_client([peers.addr[order[-1]]]) as client:
                        for i in range(keys):
                            if (await client.get(f"k{i}", r=2)).values != [i]:
                                return False
                        await client.put("after-restart", 1, w=2)
                except gossipkv.GossipKVError:
                    return False
                return True

            await wait_for(same_leader, 60)
            up = time.monotonic() - started
            await wait_for(serving, 60)
            return up, time.monotonic() - started
        finally:
            peers.kill_all()


async def main(args: argparse.Namespace) -> None:
    ups, serves = [], []
    for run in range(args.runs):
        up, serve = await one_run(args.peers, args.keys, seed=run)
        ups.append(up)
        serves.append(serve)
        print(
            f"run {run + 1}: all up, same leader {up:.2f} s; quorum reads and writes {serve:.2f} s"
        )
    print(
        f"{args.peers} peers, {args.keys} keys, {args.runs} runs: all up median "
        f"{statistics.median(ups):.2f} s; serving median {statistics.median(serves):.2f} s "
        f"(max {max(serves):.2f} s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    trio.run(main, parser.parse_args())
