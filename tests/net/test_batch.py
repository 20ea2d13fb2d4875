"""Replica batches (protocol 7): replica requests pending for one member in one turn travel in one
frame, each op answered as if it came alone; a malformed batch, either way, closes the connection
and is counted. Frames are counted here, never timed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import cbor2
import pytest
import trio
import trio.testing

from gossipkv import ConnectionClosed, RemoteError, _codec
from gossipkv._handlers import BATCH_REPLY_BYTES, batch_reply
from gossipkv._messages import (
    MAX_BATCH_OPS,
    PROTOCOL_VERSION,
    BatchError,
    ErrorReply,
    Hello,
    Kind,
    Message,
    ReplicaBatch,
    ReplicaBatchReply,
    ReplicaGet,
    ReplicaPut,
    ReplicaState,
)
from gossipkv._outbox import TransportCounters
from gossipkv._peer import Channel, handshake
from gossipkv.testing import SimNetwork
from gossipkv.transport._base import Connection

from ..sim._kvsim import kv_cluster, names

Outcome = Message | BaseException


async def _no_requests(channel: Channel, message: Message) -> Message:
    raise RemoteError("unsupported", "no")


async def _no_oneway(channel: Channel, message: Message) -> None:
    return


def _hello(name: str) -> Hello:
    return Hello(PROTOCOL_VERSION, "gossipkv", name, 1, f"{name}:7400")


async def _member_connection(
    net: SimNetwork, target: str, name: str = "n9"
) -> tuple[Connection, Hello]:
    """A connection to ``target`` whose hello claims member ``name``."""
    conn = await net.transport(f"{name}:7400").connect(target)
    remote = await handshake(
        conn,
        _hello(name),
        initiator=True,
        max_frame=64 * 1024,
        counters=TransportCounters(),
        own_node_id=name,
    )
    return conn, remote


def _channel(conn: Connection, remote: Hello, counters: TransportCounters) -> Channel:
    return Channel(
        conn,
        remote,
        on_request=_no_requests,
        on_oneway=_no_oneway,
        max_frame=1 << 20,
        counters=counters,
    )


class _Replies:
    """The outcomes of requests started with ``request_nowait``, by label."""

    def __init__(self) -> None:
        self.got: dict[str, Outcome] = {}
        self.arrived = trio.Event()
        self.expected = 0

    def to(self, label: str) -> Callable[[Outcome], None]:
        self.expected += 1

        def callback(outcome: Outcome) -> None:
            assert label not in self.got, f"{label} answered twice"
            self.got[label] = outcome
            if len(self.got) == self.expected:
                self.arrived.set()

        return callback


# --- coordinator to replica, on a simulated cluster -----------------------------------------------


async def test_concurrent_puts_to_a_member_travel_in_few_frames(
    seed: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with kv_cluster(seed, n=3) as c:  # N=3: every member holds every key
        seen: list[Message] = []
        decode = _codec.decode

        def spy(payload: bytes, **kwargs: int) -> object:
            envelope = decode(payload, **kwargs)
            seen.append(envelope.message)
            return envelope

        monkeypatch.setattr(_codec, "decode", spy)
        coordinator = c.nodes["n1"]
        puts = 24
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(puts):
                    nursery.start_soon(lambda i=i: coordinator.put(f"batched-{i}", "v", w=3))
        monkeypatch.setattr(_codec, "decode", decode)
        requests = [m for m in seen if isinstance(m, ReplicaPut | ReplicaBatch)]
        carried = sum(len(m.ops) if isinstance(m, ReplicaBatch) else 1 for m in requests)
        where = f"seed={seed}: {[type(m).__name__ for m in requests]}"
        # Every put reached both other replicas (background work may add a few more)...
        assert carried >= 2 * puts, where
        # ...in a handful of frames, not one frame per copy.
        assert len(requests) <= carried // 4, where
        assert any(isinstance(m, ReplicaBatch) and len(m.ops) > 1 for m in requests), where
        replies = [m for m in seen if isinstance(m, ReplicaBatchReply)]
        assert len(replies) == sum(1 for m in requests if isinstance(m, ReplicaBatch)), where
        for name in names(3):
            for i in range(puts):
                got = await c.nodes[name].get(f"batched-{i}", local=True)
                assert got.values == ["v"], f"{where}: {name} batched-{i}"


async def test_each_op_of_a_batch_is_answered_as_if_it_came_alone(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with kv_cluster(seed, n=3) as c, trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await c.nodes["n1"].put("present", "v", w=3)
            conn, remote = await _member_connection(c.net, c.address("n2"))
        counters = TransportCounters()
        channel = _channel(conn, remote, counters)
        await nursery.start(channel.run)
        frames = counters.frames_out
        replies = _Replies()
        ok_clock = _codec.dumps_canonical([[], []])  # an empty clock: sync changes nothing
        channel.request_nowait(ReplicaGet("present"), replies.to("present"))
        channel.request_nowait(ReplicaGet("absent"), replies.to("absent"))
        channel.request_nowait(ReplicaPut("bad", b"\xff"), replies.to("bad_clock"))
        channel.request_nowait(ReplicaGet("x" * 100_000), replies.to("bad_key"))  # sent alone
        channel.request_nowait(ReplicaPut("fine", ok_clock), replies.to("put"))
        cancelled = channel.request_nowait(ReplicaGet("never"), replies.to("cancelled"))
        channel.cancel(cancelled)
        replies.expected -= 1
        with trio.fail_after(30):
            await replies.arrived.wait()
        assert counters.frames_out - frames == 2, "one batch and the oversized request alone"
        got = replies.got
        assert isinstance(got["present"], ReplicaState) and got["present"].clock, got
        assert got["absent"] == ReplicaState(None), got
        assert got["put"] == ReplicaState(None), got
        # The same error codes a request of its own gets.
        alone = {"bad_clock": ReplicaPut("bad", b"\xff"), "bad_key": ReplicaGet("x" * 100_000)}
        for label, request in alone.items():
            error = got[label]
            assert isinstance(error, RemoteError), (label, error)
            with pytest.raises(RemoteError) as info:
                await channel.request(request)
            assert error.code == info.value.code != "internal", (label, error)
        assert "cancelled" not in got
        await channel.aclose()


@pytest.mark.parametrize(
    ("ops", "reason"),
    [
        ([["k"]] * (MAX_BATCH_OPS + 1), "bad_batch"),
        ([], "bad_batch"),
        ([["k"], ["k", "not bytes"]], "bad_field"),
    ],
    ids=["too-many", "empty", "malformed-op"],
)
async def test_a_malformed_batch_closes_the_connection_and_is_counted(
    seed: int, autojump_clock: trio.testing.MockClock, ops: list[object], reason: str
) -> None:
    async with kv_cluster(seed, n=3) as c:
        n2 = c.nodes["n2"]
        before = n2.statistics().dropped_frames.get(reason, 0)
        with trio.fail_after(30):
            conn, _ = await _member_connection(c.net, c.address("n2"))
            payload = cbor2.dumps([int(Kind.REQUEST), 1, "replica_batch", [ops]])
            await conn.send(payload)
            with pytest.raises(ConnectionClosed):
                await conn.receive()
        assert n2.statistics().dropped_frames.get(reason, 0) == before + 1, f"seed={seed}"


# --- the coordinator's end, against a scripted replica ------------------------------------------


@asynccontextmanager
async def _scripted(
    answer: Callable[[Message], Message | None],
) -> AsyncIterator[tuple[Channel, TransportCounters, list[Message]]]:
    """A channel to a replica that answers each request with ``answer(request)`` (``None``: no
    answer); the requests it received are listed."""
    net = SimNetwork("batch")
    received: list[Message] = []

    async def serve(conn: Connection) -> None:
        await handshake(
            conn,
            _hello("srv"),
            initiator=False,
            max_frame=1 << 20,
            counters=TransportCounters(),
            own_node_id="srv",
        )
        try:
            while True:
                envelope = _codec.decode(await conn.receive())
                received.append(envelope.message)
                reply = answer(envelope.message)
                if reply is None:
                    continue
                kind = Kind.ERROR if isinstance(reply, ErrorReply) else Kind.RESPONSE
                await conn.send(_codec.encode(kind, envelope.request_id, reply))
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        await nursery.start(net.transport("srv:7400").serve, "srv:7400", serve)
        conn, remote = await _member_connection(net, "srv:7400", "cli")
        counters = TransportCounters()
        channel = _channel(conn, remote, counters)
        await nursery.start(channel.run)
        yield channel, counters, received
        nursery.cancel_scope.cancel()


def _clock_of(key: str) -> bytes:
    return key.encode()


async def test_a_reply_that_does_not_answer_the_batch_closes_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def answer(message: Message) -> Message:
        assert isinstance(message, ReplicaBatch)
        return ReplicaBatchReply((None,) * (len(message.ops) - 1))  # one answer short

    async with _scripted(answer) as (channel, counters, received):
        replies = _Replies()
        for key in ("a", "b", "c"):
            channel.request_nowait(ReplicaGet(key), replies.to(key))
        with trio.fail_after(10):
            await replies.arrived.wait()
        assert [type(m) for m in received] == [ReplicaBatch]
        assert all(isinstance(r, ConnectionClosed) for r in replies.got.values()), replies.got
        assert counters.dropped["bad_batch"] == 1
        assert channel.closed


async def test_an_op_the_reply_had_no_room_for_is_asked_again_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def answer(message: Message) -> Message:
        if isinstance(message, ReplicaGet):
            return ReplicaState(_clock_of(message.key))
        assert isinstance(message, ReplicaBatch)
        errors = (BatchError(1, "batch_full", "no room"), BatchError(2, "not_found", "gone"))
        return ReplicaBatchReply((_clock_of("a"), None, None), errors)

    async with _scripted(answer) as (channel, _, received):
        replies = _Replies()
        for key in ("a", "b", "c"):
            channel.request_nowait(ReplicaGet(key), replies.to(key))
        with trio.fail_after(10):
            await replies.arrived.wait()
        assert [type(m) for m in received] == [ReplicaBatch, ReplicaGet]
        assert received[1] == ReplicaGet("b")
        got = replies.got
        assert got["a"] == ReplicaState(b"a") and got["b"] == ReplicaState(b"b"), got
        error = got["c"]
        assert isinstance(error, RemoteError) and error.code == "not_found", error
        assert not channel.closed and not channel.waiting


async def test_an_error_reply_to_a_batch_fails_each_op(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def refuse(message: Message) -> Message:
        return ErrorReply("forbidden", "not here")

    async with _scripted(refuse) as (channel, _, received):
        replies = _Replies()
        for key in ("a", "b"):
            channel.request_nowait(ReplicaGet(key), replies.to(key))
        with trio.fail_after(10):
            await replies.arrived.wait()
        assert [type(m) for m in received] == [ReplicaBatch]
        for outcome in replies.got.values():
            assert isinstance(outcome, RemoteError) and outcome.code == "forbidden", outcome
        assert not channel.closed and not channel.waiting


async def test_a_batch_whose_ops_are_all_cancelled_is_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    never = trio.Event()

    def silent(message: Message) -> Message | None:
        return None  # never answers

    async with _scripted(silent) as (channel, counters, received):
        replies = _Replies()
        ids = [channel.request_nowait(ReplicaGet(key), replies.to(key)) for key in "abc"]
        with trio.move_on_after(1):
            await never.wait()  # the batch went out; no answer comes
        assert [type(m) for m in received] == [ReplicaBatch]
        channel.cancel(ids[0])
        assert channel.waiting == 3, "two ops (and their batch) still wait"
        for request_id in ids[1:]:
            channel.cancel(request_id)
        assert not channel.waiting and not channel._batcher.in_flight
        assert not replies.got and not channel.closed
        del counters


def test_the_reply_carries_clocks_up_to_its_budget() -> None:
    big = b"x" * (BATCH_REPLY_BYTES // 2 + 1)
    batch = ReplicaBatch((ReplicaGet("a"), ReplicaGet("b"), ReplicaPut("c", b"c"), ReplicaGet("d")))
    results: list[Message | Exception | None] = [
        ReplicaState(big),
        ReplicaState(big),  # over the budget: asked again alone
        ReplicaState(None),  # a put's answer takes no room
        RemoteError("not_found", "gone"),
    ]
    reply = batch_reply(batch, results, "n2")
    assert reply.clocks == (big, None, None, None)
    assert reply.errors == (
        BatchError(1, "batch_full", "no room left in the batch"),
        BatchError(3, "not_found", "gone"),
    )
    # The first clock always fits, whatever its size.
    huge = b"x" * (2 * BATCH_REPLY_BYTES)
    alone = batch_reply(ReplicaBatch((ReplicaGet("a"),)), [ReplicaState(huge)], "n2")
    assert alone.clocks == (huge,) and not alone.errors
