"""How fast data follows ownership (issue 12), real processes with data dirs.

    python tests/bench/bench_transfers.py --event join|leave|remove|replace [--peers 5]
        [--keys 100000] [--value-size 100]

Starts N peers with data dirs on loopback, writes ``--keys`` keys of ``--value-size`` bytes at
W=2 through every peer (32 concurrent writers), then makes one membership change:

* ``join``: a new peer joins;
* ``leave``: one peer decommissions (``gossipkv leave``), timed until it has exited;
* ``remove``: one peer is SIGKILLed, then removed by the operator (``gossipkv remove``);
* ``replace``: one peer is SIGKILLed, and a new one starts with ``--replace``.

It reports the seconds from the change until every member reports no transfer in flight, no
partition left to pull and no under-replicated partition, and then checks a sample of keys with
``owners`` (every owner holds it).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gossipkv
from tests.proc._peers import Peers, cli, free_ports, members


async def poll(check: Any, within: float, every: float = 0.25) -> float:
    """Seconds until ``check()`` is true (wall time: real processes)."""
    start = time.monotonic()
    with trio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - polling real processes
            await trio.sleep(every)
    return time.monotonic() - start


async def stats_of(addrs: list[str]) -> list[dict[str, Any]] | None:
    out = []
    for addr in addrs:
        try:
            async with gossipkv.open_client([addr], request_timeout=10.0) as client:
                out.append(asdict(await client.statistics()))
        except gossipkv.GossipKVError:
            return None
    return out


async def main(args: argparse.Namespace) -> None:
    n = args.peers
    names = [f"t{i}" for i in range(1, n + 2)]  # one spare for join/replace
    with tempfile.TemporaryDirectory() as tmp:
        peers = Peers(Path(tmp))
        try:
            ports = dict(zip(names, free_ports(len(names)), strict=True))
            peers.start(names[0], ports[names[0]], data_dir=f"{tmp}/{names[0]}", remove_after="600")
            for name in names[1:n]:
                peers.start(
                    name,
                    ports[name],
                    seeds=[names[0]],
                    data_dir=f"{tmp}/{name}",
                    remove_after="600",
                )
            live = names[:n]

            async def formed() -> bool:
                docs = [await members(peers.addr[x]) for x in live]
                return all(
                    d is not None
                    and sorted(m["name"] for m in d["members"] if m["status"] == "up") == live
                    for d in docs
                )

            await poll(formed, 60)
            addrs = [peers.addr[x] for x in live]

            async def table_ready() -> bool:
                stats = await stats_of(addrs)
                return bool(stats) and all(
                    sorted(s["partitions_owned"]) == live and not s["transfers"] for s in stats
                )

            await poll(table_ready, 60)
            value = "v" * args.value_size
            started = time.monotonic()
            async with gossipkv.open_client(addrs, request_timeout=10.0) as client:
                next_key = iter(range(args.keys))

                async def writer() -> None:
                    for i in next_key:
                        await client.put(f"key{i:07d}", value, w=2)

                async with trio.open_nursery() as nursery:
                    for _ in range(32):
                        nursery.start_soon(writer)
            load = time.monotonic() - started
            print(f"loaded {args.keys} keys of {args.value_size} B in {load:.1f} s", flush=True)

            victim, spare = live[-1], names[n]
            change = time.monotonic()
            if args.event == "join":
                peers.start(spare, ports[spare], seeds=[names[0]], data_dir=f"{tmp}/{spare}")
                after = [*live, spare]
            elif args.event == "leave":
                out = cli("leave", "--peer", peers.addr[victim], timeout=600)
                print(out.stdout.strip().splitlines()[-1:], out.returncode, flush=True)
                print(f"leave returned after {time.monotonic() - change:.1f} s", flush=True)
                after = live[:-1]
            else:
                peers.signal(victim, signal.SIGKILL)
                peers.procs[victim].wait(timeout=10)
                after = live[:-1]

                async def victim_down() -> bool:
                    doc = await members(peers.addr[names[0]])
                    return doc is not None and any(
                        m["name"] == victim and not m["reachable"] for m in doc["members"]
                    )

                await poll(victim_down, 60)
                change = time.monotonic()
                if args.event == "remove":
                    out = cli("remove", victim, "--peer", peers.addr[names[0]])
                    assert out.returncode == 0, out
                else:
                    peers.start(
                        spare,
                        ports[spare],
                        seeds=[names[0]],
                        data_dir=f"{tmp}/{spare}",
                        replace=victim,
                    )
                    after = [*live[:-1], spare]
            addrs = [peers.addr[x] for x in after]

            async def settled() -> bool:
                stats = await stats_of(addrs)
                return bool(stats) and all(
                    sorted(s["partitions_owned"]) == sorted(after)
                    and not s["transfers"]
                    and s["partitions_filling"] == 0
                    and s["under_replicated"] == 0
                    for s in stats
                )

            took = await poll(settled, 600)
            total = time.monotonic() - change
            stats = await stats_of(addrs) or []
            moved = sum(int(s["keys_filled"]) for s in stats)
            print(
                f"{args.event}: every partition on its N owners {total:.1f} s after the change "
                f"({took:.1f} s of polling); {moved} keys stored by transfers",
                flush=True,
            )
            sample = random.Random(1).sample(range(args.keys), 200)
            async with gossipkv.open_client([addrs[0]], request_timeout=10.0) as client:
                short = 0
                for i in sample:
                    doc = await client.owners(f"key{i:07d}")
                    if not all(o["holds"] for o in doc["owners"]):  # type: ignore[union-attr]
                        short += 1
            print(f"sample of 200 keys: {short} with an owner lacking the key", flush=True)
        finally:
            peers.kill_all()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--event", choices=["join", "leave", "remove", "replace"], default="join")
    parser.add_argument("--peers", type=int, default=5)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=100)
    trio.run(main, parser.parse_args())
