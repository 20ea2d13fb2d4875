"""Connection memory benchmark: what a peer holds per connection, measured with tracemalloc.

Run: ``python tests/bench/bench_connection_memory.py [N]`` (default 200). One peer runs in this
process on loopback; raw sockets in the same process play the other side (their own memory is
small and allocated before each measurement where possible). Prints one JSON line per scenario:

* ``idle_clients``: N connections that completed a client ``hello`` and then stay silent;
* ``half_sent_frames``: 24 connections that each, after their ``hello``, send the header of a
  16 MiB frame and 8 MiB of its body, then stall (issue 10: each pinned ~16 MB, 384 MB in all).
  The receive budget (64 MiB) admits four such bodies at a time; the others wait unread, and each
  one is cut at its frame deadline;
* ``before_hello_bombs``: 24 connections that each send a 16 MiB frame of empty arrays before
  any ``hello``.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc

import cbor2
import trio

import gossipkv
from gossipkv import GossipConfig, KVConfig, NetworkLimits, Node, open_node

MiB = 1024 * 1024


def _frame(obj: object) -> bytes:
    body = cbor2.dumps(obj)
    return len(body).to_bytes(4, "big") + body


HELLO = _frame([3, 0, "hello", [gossipkv.PROTOCOL_VERSION, "gossipkv", "client", 1, ""]])


async def _connect(node: Node) -> trio.SocketStream:
    host, _, port = node.address.rpartition(":")
    return await trio.open_tcp_stream(host, int(port))


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def idle_clients(node: Node, n: int) -> dict[str, object]:
    before = _traced()
    streams = [await _connect(node) for _ in range(n)]
    for stream in streams:
        await stream.send_all(HELLO)
        await stream.receive_some(4096)  # the peer's hello: its channel is running
    await trio.sleep(0.5)
    held = _traced() - before
    seen = node.statistics().client_connections
    for stream in streams:
        await stream.aclose()
    return {
        "scenario": "idle_clients",
        "connections": n,
        "bytes_per_connection": held // n,
        "client_connections_seen": seen,
    }


async def half_sent_frames(node: Node) -> dict[str, object]:
    piece = b"\x00" * MiB
    before = _traced()
    tracemalloc.reset_peak()
    streams = []
    for _ in range(24):
        stream = await _connect(node)
        await stream.send_all(HELLO + (16 * MiB).to_bytes(4, "big"))
        streams.append(stream)

    async def feed(stream: trio.SocketStream) -> None:
        with trio.move_on_after(3.0):
            for _ in range(8):
                await stream.send_all(piece)

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(feed, stream)
    await trio.sleep(0.5)
    held = _traced() - before
    budget = node._rt.transport.receive_budget
    reserved = 0 if budget is None else budget.reserved
    _, peak = tracemalloc.get_traced_memory()
    for stream in streams:
        await stream.aclose()
    return {
        "scenario": "half_sent_frames",
        "connections": 24,
        "held_mib": round(held / MiB, 1),
        "peak_mib": round((peak - before) / MiB, 1),
        "budget_reserved_mib": round(reserved / MiB, 1),
    }


async def before_hello_bombs(node: Node) -> dict[str, object]:
    body = b"\x9a" + (16 * MiB - 5).to_bytes(4, "big") + b"\x80" * (16 * MiB - 5)
    bomb = len(body).to_bytes(4, "big") + body
    before = _traced()
    tracemalloc.reset_peak()

    async def send(stream: trio.SocketStream) -> None:
        try:
            await stream.send_all(bomb)
        except trio.BrokenResourceError:
            pass

    streams = [await _connect(node) for _ in range(24)]
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(send, stream)
    _, peak = tracemalloc.get_traced_memory()
    for stream in streams:
        await stream.aclose()
    return {
        "scenario": "before_hello_bombs",
        "connections": 24,
        "peak_mib": round((peak - before) / MiB, 2),
        "dropped_too_large": node.statistics().dropped_frames.get("too_large", 0),
    }


async def main(n: int) -> None:
    config = GossipConfig(gossip_interval=0.05, leave_timeout=1.0, replicas=1)
    limits = NetworkLimits(frame_timeout=10.0)
    tracemalloc.start()
    async with open_node(
        name="bench", listen="127.0.0.1:0", config=config, kv=KVConfig(r=1, w=1), limits=limits
    ) as node:
        for scenario in (idle_clients(node, n), half_sent_frames(node), before_hello_bombs(node)):
            print(json.dumps(await scenario), flush=True)
    tracemalloc.stop()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 200)
