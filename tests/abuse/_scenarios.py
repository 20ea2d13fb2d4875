"""The memory and connection attacks of issue 10, as async context managers over raw connections.

Each one starts its attack on entry, keeps its connections open while the block runs (so the test
can sample RSS, poll counters and check the cluster with the attack in place) and closes them on
exit. The tests (``test_memory_abuse.py``) and ``report.py`` both use them. The parameters are
the constants below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

import gossipkv
from gossipkv._messages import KvGet, WatchRequest

from ._attack import (
    RawConnection,
    empty_arrays_payload,
    frame,
    message_frame,
    raw_connections,
)
from ._cluster import client_of

MiB = 2**20

# 8. one frame of empty CBOR arrays, before any hello
BIG_FRAME_BYTES = 16 * MiB
BIG_FRAME_WAIT = 20.0  # seconds to wait for the peer to close the connection
# 9. half-sent frames after a hello
HALF_SENT_CONNECTIONS = 24
HALF_SENT_CLAIMED = 16 * MiB  # the length prefix
HALF_SENT_BYTES = 16 * MiB - 1000  # what is actually sent of the body (then nothing more)
HALF_SENT_SEND_WITHIN = 3.0  # seconds to push the bodies (a peer that stops reading is fine)
# 10. pipelined tiny kv_gets of one 1 MiB value, replies never read
UNREAD_VALUE_BYTES = MiB - 100
UNREAD_CONNECTIONS = (4, 8)
UNREAD_PUSH_SECONDS = 4.0  # keep pipelining gets for this long (the peer stops reading: fine)
UNREAD_BATCH = 256  # gets per write
# 11. connection flood
FLOOD_HELLO_CONNECTIONS = 500  # complete a hello, then idle
FLOOD_SILENT_CONNECTIONS = 100  # never send a hello
FLOOD_SILENT_SOURCE = "127.0.0.3"  # another source: a per-source cap must not hide the timeout
# 12. watch flood
WATCH_REQUESTS = 5000
WATCH_PREFIX = "watched:"
WATCHED_PUTS = 5  # well-behaved writes under the prefix while the watches are in place


@dataclass
class Outcome:
    """What an attack saw from its side.

    ``outbound`` counts the attacking connections the peer owes replies or events to (what the
    per-connection outbound budget of ``_expect.rss_bound`` is for).
    """

    connections: int = 0
    outbound: int = 0
    notes: dict[str, object] = field(default_factory=dict)

    def text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.notes.items())


@asynccontextmanager
async def big_frame_before_hello(addr: str) -> AsyncIterator[Outcome]:
    """One connection sends a 16 MiB frame of empty arrays as its first frame; the block runs
    once the peer closed the connection (or ``BIG_FRAME_WAIT`` passed)."""
    out = Outcome(connections=1, outbound=0)
    conn = await RawConnection.open(addr)
    try:
        start = trio.current_time()
        sent = await conn.send(frame(empty_arrays_payload(BIG_FRAME_BYTES)))
        out.notes["sent"] = sent
        with trio.move_on_after(BIG_FRAME_WAIT):
            await conn.at_eof()
        out.notes["closed_by_peer"] = conn.closed
        out.notes["closed_after_s"] = round(trio.current_time() - start, 1)
        yield out
    finally:
        await conn.aclose()


@asynccontextmanager
async def half_sent_frames(addr: str) -> AsyncIterator[Outcome]:
    """``HALF_SENT_CONNECTIONS`` connections each complete a hello, then send most of a 16 MiB
    frame and stop; they stay open while the block runs."""
    out = Outcome(connections=HALF_SENT_CONNECTIONS)
    chunk = bytes(MiB)
    async with raw_connections(addr, HALF_SENT_CONNECTIONS, hello=True) as conns:
        out.notes["handshaken"] = sum(not c.closed for c in conns)

        async def send_one(conn: RawConnection) -> None:
            if not await conn.send(HALF_SENT_CLAIMED.to_bytes(4, "big")):
                return
            left = HALF_SENT_BYTES
            while left > 0 and await conn.send(chunk[: min(left, MiB)]):
                left -= min(left, MiB)

        with trio.move_on_after(HALF_SENT_SEND_WITHIN):
            async with trio.open_nursery() as nursery:
                for conn in conns:
                    if not conn.closed:
                        nursery.start_soon(send_one, conn)
        out.notes["open_after_send"] = sum(not c.closed for c in conns)
        yield out
        out.notes["open_at_end"] = sum(not c.closed for c in conns)


@asynccontextmanager
async def unread_gets(addr: str, connections: int, key: str) -> AsyncIterator[Outcome]:
    """``connections`` connections pipeline ``kv_get(key)`` (a 1 MiB value) for
    ``UNREAD_PUSH_SECONDS`` and never read a reply; they stay open while the block runs."""
    out = Outcome(connections=connections, outbound=connections)
    sent = [0] * connections
    async with raw_connections(addr, connections, hello=True) as conns:

        async def push(i: int, conn: RawConnection) -> None:
            rid = 1
            while True:
                batch = b"".join(
                    message_frame(KvGet(key), request_id=rid + j) for j in range(UNREAD_BATCH)
                )
                if not await conn.send(batch):
                    return
                rid += UNREAD_BATCH
                sent[i] += UNREAD_BATCH

        with trio.move_on_after(UNREAD_PUSH_SECONDS):
            async with trio.open_nursery() as nursery:
                for i, conn in enumerate(conns):
                    nursery.start_soon(push, i, conn)
        out.notes["gets_written"] = sum(sent)
        yield out
        out.notes["closed_by_peer"] = sum(c.closed for c in conns)


@asynccontextmanager
async def connection_flood(addr: str) -> AsyncIterator[Outcome]:
    """``FLOOD_HELLO_CONNECTIONS`` connections complete a hello and idle, then
    ``FLOOD_SILENT_CONNECTIONS`` more (from another source address) never send one; all stay open
    while the block runs."""
    out = Outcome(connections=FLOOD_HELLO_CONNECTIONS + FLOOD_SILENT_CONNECTIONS)
    async with raw_connections(addr, FLOOD_HELLO_CONNECTIONS, hello=True) as idle:
        out.notes["handshaken"] = sum(not c.closed for c in idle)
        async with raw_connections(
            addr, FLOOD_SILENT_CONNECTIONS, hello=False, source=FLOOD_SILENT_SOURCE
        ) as silent:
            out.notes["silent_opened"] = len(silent)
            yield out


@asynccontextmanager
async def watch_flood(addr: str) -> AsyncIterator[Outcome]:
    """One connection sends ``WATCH_REQUESTS`` watch requests (reading the replies, and every
    event afterwards); it stays open while the block runs."""
    out = Outcome(connections=1, outbound=1)
    conn = await RawConnection.open(addr)
    replies: dict[str, int] = {}
    events = 0
    try:
        await conn.hello()
        requests = b"".join(
            message_frame(WatchRequest(WATCH_PREFIX), request_id=i + 1)
            for i in range(WATCH_REQUESTS)
        )
        async with trio.open_nursery() as nursery:
            answered = trio.Event()

            async def read_all() -> None:
                nonlocal events
                while (got := await conn.read_frame()) is not None:
                    kind, _, tag, _ = got
                    if tag == "watch_event":
                        events += 1
                    else:
                        name = {1: "reply", 2: "error"}.get(kind, str(kind))
                        replies[name] = replies.get(name, 0) + 1
                        if sum(replies.values()) == WATCH_REQUESTS:
                            answered.set()
                answered.set()

            nursery.start_soon(read_all)
            await conn.send(requests)
            with trio.move_on_after(10):
                await answered.wait()
            out.notes["replies"] = dict(replies)
            yield out
            out.notes["events_received"] = events
            nursery.cancel_scope.cancel()
    finally:
        await conn.aclose()


async def watched_writes(addr: str, acked: Any) -> int:
    """``WATCHED_PUTS`` well-behaved writes (W = 3) under the watched prefix, each one an event
    for every watch; returns how many failed (an overloaded replica may miss the quorum)."""
    failed = 0
    async with client_of(addr) as c:
        for i in range(WATCHED_PUTS):
            try:
                await acked.put(c, f"{WATCH_PREFIX}{i}", f"w{i}", w=3)
            except gossipkv.GossipKVError:
                failed += 1
    return failed
