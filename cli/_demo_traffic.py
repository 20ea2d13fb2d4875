"""Light sample traffic for ``gossipkv demo``: reads and writes on a few keys, with some siblings.

Most writes read first and write back with the context (no siblings); now and then two blind
puts hit the same key, leaving two concurrent siblings that a later read-then-write resolves.
"""

from __future__ import annotations

import random
from collections import deque

import trio

import gossipkv

from ._common import open_client

KEYS = 20
PAUSE = 0.1


async def write_sample_traffic(addresses: list[str], cluster: str, rng: random.Random) -> None:
    """Run until cancelled; reconnects (to any address) when the connection fails."""
    step = 0
    conflicted: deque[str] = deque(maxlen=KEYS)
    while True:
        try:
            async with open_client(
                addresses, cluster=cluster, connect_timeout=1.0, request_timeout=3.0
            ) as client:
                while True:
                    step += 1
                    key = f"key-{rng.randrange(KEYS):02d}"
                    try:
                        if step % 40 == 0:
                            # Two blind puts: concurrent writes, kept as two siblings.
                            await client.put(key, f"left-{step}")
                            await client.put(key, f"right-{step}")
                            conflicted.append(key)
                        elif step % 40 == 20 and conflicted:
                            key = conflicted.popleft()
                            seen = await client.get(key)
                            await client.put(key, f"merged-{step}", context=seen.context)
                        else:
                            seen = await client.get(key)
                            if rng.random() < 0.5:
                                await client.put(key, f"v{step}", context=seen.context)
                    except (gossipkv.QuorumNotReached, gossipkv.ClusterNotReady):
                        pass  # a member is down or the table is not ready: try the next key
                    await trio.sleep(PAUSE)
        # The demo's traffic must outlive any one failure (peer stopping, connection lost).
        except Exception:
            await trio.sleep(1.0)
