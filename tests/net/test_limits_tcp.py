"""NetworkLimits over real loopback TCP, in this process: the red-team attacks of issue 10 are
refused early, with memory bounded (tracemalloc, not RSS), and the node keeps serving."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import cbor2
import pytest
import trio

import gossipkv
from gossipkv import GossipConfig, KVConfig, NetworkLimits, Node, open_client, open_node
from gossipkv._outbox import Outbox

FAST = GossipConfig(gossip_interval=0.05, leave_timeout=2.0, replicas=1)
ONE = KVConfig(r=1, w=1)
MiB = 1024 * 1024


@asynccontextmanager
async def one_node(limits: NetworkLimits | None = None) -> AsyncIterator[Node]:
    """A single-member cluster on loopback that serves the data path (N=1)."""
    async with open_node(
        name="a", listen="127.0.0.1:0", config=FAST, kv=ONE, limits=limits
    ) as node:
        with trio.fail_after(10):
            await node.wait_until(lambda n: n.statistics().partitions > 0)
        yield node


def _frame(obj: object) -> bytes:
    body = cbor2.dumps(obj)
    return len(body).to_bytes(4, "big") + body


def _hello(name: str = "client") -> bytes:
    return _frame([3, 0, "hello", [gossipkv.PROTOCOL_VERSION, "gossipkv", name, 1, ""]])


async def _connect(node: Node) -> trio.SocketStream:
    host, _, port = node.address.rpartition(":")
    return await trio.open_tcp_stream(host, int(port))


async def _drain(stream: trio.SocketStream) -> None:
    """Read until the node closes the connection."""
    with trio.fail_after(10):
        try:
            while await stream.receive_some(1 << 16):
                pass
        except trio.BrokenResourceError:
            pass


async def _send_and_drain(stream: trio.SocketStream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the node closed the connection before taking it all: that is the point
    await _drain(stream)
    await stream.aclose()


def refused(node: Node, reason: str) -> int:
    return node.statistics().refusals.get(reason, 0)


async def test_a_bomb_before_the_hello_is_refused_at_its_header() -> None:
    """Issue 10: a 16 MiB frame of empty arrays sent before any hello took a peer to 1.27 GB.
    Before the hello a frame may be 64 KiB: the length prefix alone refuses it."""
    async with one_node() as node:
        body = b"\x9a" + (16 * MiB - 5).to_bytes(4, "big") + b"\x80" * (16 * MiB - 5)
        bomb = len(body).to_bytes(4, "big") + body
        stream = await _connect(node)
        tracemalloc.start()
        await _send_and_drain(stream, bomb)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert node.statistics().dropped_frames.get("too_large") == 1
        assert peak < 2 * MiB, f"{peak} bytes traced while refusing a 16 MiB frame"
        async with open_client([node.address]) as client:
            assert [m.name for m in await client.members() if m.is_self] == ["a"]


async def test_a_bomb_after_the_hello_is_refused_before_it_is_decoded() -> None:
    async with one_node() as node:
        size = 4 * MiB
        body = b"\x9a" + size.to_bytes(4, "big") + b"\x80" * size
        bomb = _hello() + len(body).to_bytes(4, "big") + body
        stream = await _connect(node)
        tracemalloc.start()
        await _send_and_drain(stream, bomb)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert node.statistics().dropped_frames.get("too_complex") == 1
        # Received (chunks, then joined once) and checked: ~2x the frame, where decoding it
        # would have taken ~64x.
        assert peak < 3 * size, f"{peak} bytes traced for a {size}-byte frame"
        async with open_client([node.address]) as client:
            assert [m.name for m in await client.members() if m.is_self] == ["a"]


async def test_a_half_sent_frame_is_closed_at_its_deadline_and_returns_its_budget() -> None:
    limits = NetworkLimits(frame_timeout=0.5)
    async with one_node(limits) as node:
        budget = node._rt.transport.receive_budget
        assert budget is not None
        stream = await _connect(node)
        # A 1 MiB frame of which 100 KiB arrive; the rest never does.
        await stream.send_all(_hello() + (MiB).to_bytes(4, "big") + b"\x00" * (100 * 1024))
        with trio.fail_after(10):
            await node.wait_until(lambda n: refused(n, "frame_timeout") == 1)
        await _drain(stream)
        assert budget.reserved == 0
        await stream.aclose()


async def test_connection_caps_refuse_at_once_and_the_rest_keeps_working() -> None:
    limits = NetworkLimits(max_connections=8, max_connections_per_source=5)
    async with one_node(limits) as node, open_client([node.address]) as client:
        await client.put("k", "v")  # the client's connection: 1 of 5 from 127.0.0.1
        silent = [await _connect(node) for _ in range(4)]  # in the hello: they count
        refused_stream = await _connect(node)
        await _drain(refused_stream)  # closed at once, nothing read
        await refused_stream.aclose()
        assert refused(node, "source_limit") == 1
        assert (await client.get("k")).values == ["v"]
        # Connections that never send their hello are closed after request_timeout.
        with trio.fail_after(10):
            await node.wait_until(lambda n: refused(n, "hello_timeout") == 4)
        for stream in silent:
            await stream.aclose()


async def test_hellos_claiming_one_member_name_are_capped() -> None:
    async with one_node() as node, open_client([node.address]) as client:
        await client.put("k", "v")
        rogues = []
        for _ in range(5):
            stream = await _connect(node)
            await stream.send_all(_hello("rogue"))
            rogues.append(stream)
        with trio.fail_after(10):  # one of them is closed without an answer
            await node.wait_until(lambda n: refused(n, "peer_limit") == 1)
        assert (await client.get("k")).values == ["v"]
        for stream in rogues:
            await stream.aclose()


async def test_the_total_cap_holds_with_many_sources() -> None:
    limits = NetworkLimits(max_connections=3, max_connections_per_source=100)
    async with one_node(limits) as node, open_client([node.address]) as client:
        await client.put("k", "v")
        held = [await _connect(node) for _ in range(2)]
        extra = await _connect(node)
        await _drain(extra)
        await extra.aclose()
        assert refused(node, "connection_limit") == 1
        assert (await client.get("k")).values == ["v"]
        for stream in held:
            await stream.aclose()


async def test_a_client_that_never_reads_its_replies_is_held_to_the_byte_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10: pipelined gets of a 1 MiB value pushed peers to 1 GB (the outbound queue was
    bounded by frames, not bytes). The reader now stops taking requests at the byte bound (TCP
    pushes back), and a connection whose writes stall is closed at the frame deadline."""
    value_size = 256 * 1024
    bound = MiB
    limits = NetworkLimits(max_outbound_bytes=bound, frame_timeout=1.0)
    peak: dict[int, int] = {}
    put = Outbox.put

    def watched(self: Outbox, payload: bytes) -> None:
        put(self, payload)
        peak[id(self)] = max(peak.get(id(self), 0), self.queued_bytes)

    monkeypatch.setattr(Outbox, "put", watched)
    async with one_node(limits) as node, open_client([node.address]) as client:
        await client.put("big", "x" * value_size)
        stream = await _connect(node)
        gets = b"".join(_frame([0, i, "kv_get", ["big", 1, False]]) for i in range(1, 401))
        await stream.send_all(_hello() + gets)  # 400 x 256 KiB = 100 MiB of replies
        with trio.fail_after(30):
            await node.wait_until(lambda n: refused(n, "send_timeout") == 1)
        # Everyone else was served meanwhile, and nothing stays queued for the closed one.
        assert (await client.get("big")).values == ["x" * value_size]
        # The writer counts a reply off once its last byte is written, which the client may
        # have read first: wait for that count, not for the client's read.
        with trio.fail_after(10):
            await node.wait_until(lambda n: n.outbound_queued_bytes < 64 * 1024)
        await stream.aclose()
    worst = max(peak.values())
    # The bound, plus the replies of requests already taken when it was reached (at most the
    # in-flight limit, 64).
    assert worst <= bound + 64 * (value_size + 1024), worst
    assert worst < 400 * value_size / 4


async def test_an_idle_client_connection_is_closed_and_the_client_reconnects() -> None:
    limits = NetworkLimits(idle_timeout=0.3)
    async with one_node(limits) as node, open_client([node.address]) as client:
        put = await client.put("k", "v1")
        for round_ in range(2):
            with trio.fail_after(10):
                await node.wait_until(lambda n, r=round_: refused(n, "idle_timeout") > r)
            # Let the client's reader see the close first: a request sent into the closing
            # connection is lost with it, and a per-peer call like set_metadata is not retried
            # on another peer (it is about the connected one).
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            if round_ == 0:
                assert (await client.get("k")).values == ["v1"]
            else:
                await client.set_metadata("role", "test")  # an operator request
        assert (await client.put("k", "v2", context=put.context)).values == ["v2"]
