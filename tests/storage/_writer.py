"""Crash-test writer: opens a LogEngine and writes until it is killed.

Usage: python _writer.py DATA_DIR FSYNC SEED [WRITERS]

WRITERS (8 unless given) concurrent writers, each owning its own keys (so each key has at most one write in flight).
Before a put it prints ``BEGIN key digest``; after the put returns (acknowledged) it prints
``ACK key digest``; every line is flushed, so the test knows what was acknowledged at the kill.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))

from _helpers import digest, next_clock

from gossipkv.storage import open_log_engine


async def main(data_dir: str, fsync: str, seed: int, writers: int) -> None:
    rng = random.Random(seed)
    out = sys.stdout
    async with open_log_engine(data_dir, fsync=fsync, segment_bytes=16 * 1024) as eng:
        actor = f"w/{eng.incarnation:x}/0"

        async def writer(w: int) -> None:
            while True:
                key = f"w{w}-k{rng.randrange(25)}"
                local = await eng.get(key)
                clock = next_clock(local, "x" * rng.randrange(1, 300), actor)
                out.write(f"BEGIN {key} {digest(clock)}\n")
                out.flush()
                await eng.put(key, clock)
                out.write(f"ACK {key} {digest(clock)}\n")
                out.flush()

        print("READY", flush=True)
        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, w)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int((sys.argv[4:] or ["8"])[0]))
