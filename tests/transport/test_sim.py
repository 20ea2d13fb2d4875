"""SimNetwork beyond the Transport contract: determinism and every fault it can inject.

Everything runs on an autojump MockClock; each randomized test is parametrized over seeds and
puts the seed in its assertion messages.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest
import trio
import trio.testing

from gossipkv import ConfigError, ConnectionClosed, TransportError
from gossipkv.testing import SimNetwork, SimNetworkStatistics
from gossipkv.transport import Connection, Transport

SEEDS = [1, 2, 3]
A, B, C = "10.0.0.1:7400", "10.0.0.2:7400", "10.0.0.3:7400"


class Inbox:
    """A handler recording, per remote address, what arrived (and when, in virtual time)."""

    def __init__(self) -> None:
        self.by_remote: dict[str, list[tuple[float, bytes]]] = {}
        self.ended: list[str] = []
        self.changed = trio.Event()

    def payloads(self, remote: str | None = None) -> list[bytes]:
        if remote is None:
            return [p for got in self.by_remote.values() for _, p in got]
        return [p for _, p in self.by_remote.get(remote, [])]

    async def __call__(self, conn: Connection) -> None:
        got = self.by_remote.setdefault(conn.remote_address, [])
        try:
            while True:
                payload = await conn.receive()
                got.append((trio.current_time(), payload))
                self._poke()
        except ConnectionClosed:
            self.ended.append(conn.remote_address)
            self._poke()

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()


async def start(
    nursery: trio.Nursery, net: SimNetwork, *addresses: str
) -> tuple[dict[str, Transport], dict[str, Inbox]]:
    transports, inboxes = {}, {}
    for address in addresses:
        transports[address] = net.transport(address)
        inboxes[address] = Inbox()
        await nursery.start(transports[address].serve, address, inboxes[address])
    return transports, inboxes


async def open_net(nursery: trio.Nursery, seed: int, **kwargs: float) -> SimNetwork:
    net = SimNetwork(seed, **kwargs)  # type: ignore[arg-type]
    await nursery.start(net.run)
    return net


# --- determinism ------------------------------------------------------------------------------


def _run_scenario(seed: int, reverse: bool) -> dict[str, dict[str, list[tuple[float, bytes]]]]:
    """Three processes send to each other through a lossy, jittery, duplicating, reordering net."""
    addresses = [A, B, C]
    inboxes: dict[str, Inbox] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = await open_net(nursery, seed, latency=0.005, jitter=0.003)
            net.set_link(loss=0.1, duplicate=0.1, reorder=0.1)
            net.set_link(A, B, latency=0.02)
            transports, started = await start(nursery, net, *addresses)
            inboxes.update(started)
            pairs = [(s, d) for s in addresses for d in addresses if s != d]
            if reverse:
                pairs.reverse()

            async def sender(src: str, dst: str) -> None:
                conn = await transports[src].connect(dst)
                for i in range(100):
                    await conn.send(f"{src}>{dst}#{i}".encode())
                    if i % 10 == 0:
                        await trio.sleep(0.004)
                await conn.aclose()

            async with trio.open_nursery() as senders:
                for src, dst in pairs:
                    senders.start_soon(sender, src, dst)
            for address in addresses:
                await inboxes[address].wait_for(lambda a=address: len(inboxes[a].ended) == 2)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return {address: inbox.by_remote for address, inbox in inboxes.items()}


@pytest.mark.parametrize("seed", SEEDS)
def test_same_seed_gives_identical_delivery_traces(seed: int) -> None:
    first = _run_scenario(seed, reverse=False)
    second = _run_scenario(seed, reverse=True)
    assert first == second, f"seed={seed}: traces differ"
    assert sum(len(v) for got in first.values() for v in got.values()) > 0, f"seed={seed}"


def test_different_seeds_give_different_traces() -> None:
    assert _run_scenario(1, reverse=False) != _run_scenario(2, reverse=False)


# --- link faults ------------------------------------------------------------------------------


async def _send_numbered(transport: Transport, dst: str, count: int) -> list[bytes]:
    conn = await transport.connect(dst)
    sent = [i.to_bytes(4, "big") for i in range(count)]
    for payload in sent:
        await conn.send(payload)
    await conn.aclose()
    return sent


@pytest.mark.parametrize("seed", SEEDS)
async def test_loss_drops_about_the_configured_fraction(
    seed: int, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, seed)
    net.set_link(A, B, loss=0.3)
    transports, inboxes = await start(nursery, net, A, B)
    sent = await _send_numbered(transports[A], B, 2000)
    await inboxes[B].wait_for(lambda: inboxes[B].ended == [A])
    got = inboxes[B].payloads(A)
    stats = net.statistics()
    assert 0.2 < 1 - len(got) / len(sent) < 0.4, f"seed={seed}: {len(got)} of {len(sent)} arrived"
    assert got == [p for p in sent if p in set(got)], f"seed={seed}: survivors out of order"
    assert stats.dropped_loss == len(sent) - len(got), f"seed={seed}: {stats}"


@pytest.mark.parametrize("seed", SEEDS)
async def test_duplicates_are_delivered(
    seed: int, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, seed)
    net.set_link(duplicate=0.2)
    transports, inboxes = await start(nursery, net, A, B)
    sent = await _send_numbered(transports[A], B, 500)
    await inboxes[B].wait_for(lambda: inboxes[B].ended == [A])
    got = inboxes[B].payloads(A)
    stats = net.statistics()
    assert set(got) == set(sent), f"seed={seed}"
    assert len(got) > len(sent), f"seed={seed}: no duplicates seen"
    assert stats.frames_duplicated == len(got) - len(sent), f"seed={seed}: {stats}"


@pytest.mark.parametrize("seed", SEEDS)
async def test_reorder_lets_frames_overtake(
    seed: int, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, seed)
    net.set_link(A, B, reorder=0.2)
    transports, inboxes = await start(nursery, net, A, B)
    sent = await _send_numbered(transports[A], B, 500)
    await inboxes[B].wait_for(lambda: inboxes[B].ended == [A])
    got = inboxes[B].payloads(A)
    assert sorted(got) == sent, f"seed={seed}: frames lost or duplicated"
    assert got != sent, f"seed={seed}: nothing was reordered"
    assert net.statistics().frames_reordered > 0, f"seed={seed}"


@pytest.mark.parametrize("seed", SEEDS)
async def test_jitter_alone_keeps_a_connection_in_order(
    seed: int, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, seed, latency=0.01, jitter=0.05)
    transports, inboxes = await start(nursery, net, A, B)
    sent = await _send_numbered(transports[A], B, 500)
    await inboxes[B].wait_for(lambda: inboxes[B].ended == [A])
    assert inboxes[B].payloads(A) == sent, f"seed={seed}"


async def test_set_link_validates(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(0)
    with pytest.raises(ConfigError, match="loss"):
        net.set_link(loss=1.5)
    with pytest.raises(ConfigError, match="latency"):
        net.set_link(A, latency=-1)
    with pytest.raises(ConfigError):
        SimNetwork(0, jitter=-0.1)
    with pytest.raises(ConfigError, match="bandwidth"):
        net.set_link(A, B, bandwidth=0)


async def test_bandwidth_delays_bodies_and_keeps_order(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """A frame's body arrives len/bandwidth after its header; the next frame follows it."""
    net = SimNetwork(0, latency=0.01)
    await nursery.start(net.run)
    transports, inboxes = await start(nursery, net, A, B)
    net.set_link(A, B, bandwidth=1000.0)
    conn = await transports[A].connect(B)
    started = trio.current_time()
    await conn.send(b"x" * 2000)  # 2 s on the wire
    await conn.send(b"y")
    await conn.aclose()
    await inboxes[B].wait_for(lambda: inboxes[B].ended == [A])
    assert inboxes[B].payloads(A) == [b"x" * 2000, b"y"]
    assert trio.current_time() - started >= 2.0


# --- partitions -------------------------------------------------------------------------------


async def test_symmetric_partition_and_heal(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, 0)
    transports, inboxes = await start(nursery, net, A, B, C)
    a_to_b = await transports[A].connect(B)
    b_to_a = await transports[B].connect(A)
    b_to_c = await transports[B].connect(C)
    net.partition([A], [B, C])
    await a_to_b.send(b"lost a>b")
    await b_to_a.send(b"lost b>a")
    await b_to_c.send(b"same side")
    await inboxes[C].wait_for(lambda: inboxes[C].payloads(B) == [b"same side"])
    await trio.sleep(1)
    assert inboxes[B].payloads(A) == []
    assert inboxes[A].payloads(B) == []
    assert net.statistics().dropped_partition == 2

    # Connecting across the partition waits (like TCP into a black hole) ...
    with trio.move_on_after(5) as scope:
        await transports[C].connect(A)
    assert scope.cancelled_caught
    # ... until the partition heals.
    events: list[str] = []

    async def connect_c_to_a() -> None:
        conn = await transports[C].connect(A)
        events.append("connected")
        await conn.send(b"after heal c>a")

    nursery.start_soon(connect_c_to_a)
    await trio.sleep(5)
    events.append("heal")
    net.heal()
    # Established connections carry traffic again.
    await a_to_b.send(b"after heal a>b")
    await inboxes[B].wait_for(lambda: inboxes[B].payloads(A) == [b"after heal a>b"])
    await inboxes[A].wait_for(lambda: inboxes[A].payloads(C) == [b"after heal c>a"])
    assert events == ["heal", "connected"]


async def test_one_way_partition(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, 0)
    transports, inboxes = await start(nursery, net, A, B)
    a_to_b = await transports[A].connect(B)
    b_to_a = await transports[B].connect(A)
    net.partition([A], [B], one_way=True)
    await a_to_b.send(b"dropped")
    await b_to_a.send(b"delivered")
    await inboxes[A].wait_for(lambda: inboxes[A].payloads(B) == [b"delivered"])
    await trio.sleep(1)
    assert inboxes[B].payloads(A) == []
    # A TCP handshake needs both directions: connecting either way waits.
    for src, dst in ((A, B), (B, A)):
        with trio.move_on_after(5) as scope:
            await transports[src].connect(dst)
        assert scope.cancelled_caught, f"{src} -> {dst} connected across a one-way partition"
    net.heal()
    await a_to_b.send(b"healed")
    await inboxes[B].wait_for(lambda: inboxes[B].payloads(A) == [b"healed"])


async def test_one_way_partition_takes_two_groups() -> None:
    with pytest.raises(ConfigError):
        SimNetwork(0).partition([A], [B], [C], one_way=True)


# --- pause, crash, restart --------------------------------------------------------------------


async def test_pause_holds_frames_and_blocks_wait_runnable(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, 0)
    transports, inboxes = await start(nursery, net, A, B)
    a_to_b = await transports[A].connect(B)
    b_to_a = await transports[B].connect(A)
    net.pause(B)
    runnable: list[str] = []

    async def b_main_loop() -> None:
        await transports[B].wait_runnable()
        runnable.append("b ran")

    nursery.start_soon(b_main_loop)
    for i in range(3):
        await a_to_b.send(b"to paused %d" % i)
    await b_to_a.send(b"from paused")  # a paused process's stray task: held as well
    await trio.sleep(10)
    assert runnable == []
    assert inboxes[B].payloads(A) == []
    assert inboxes[A].payloads(B) == []
    assert net.statistics().held == 4
    await transports[A].wait_runnable()  # other processes run normally

    net.resume(B)
    await inboxes[B].wait_for(lambda: len(inboxes[B].payloads(A)) == 3)
    await inboxes[A].wait_for(lambda: inboxes[A].payloads(B) == [b"from paused"])
    assert inboxes[B].payloads(A) == [b"to paused 0", b"to paused 1", b"to paused 2"]
    await trio.testing.wait_all_tasks_blocked()
    assert runnable == ["b ran"]
    assert net.statistics().held == 0


async def test_crash_closes_connections_and_refuses_connects(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, 0)
    a, b = net.transport(A), net.transport(B)
    b_inbox = Inbox()
    serve_errors: list[Exception] = []

    async def serve_b(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await b.serve(B, b_inbox, task_status=task_status)
        except TransportError as exc:
            serve_errors.append(exc)

    await nursery.start(serve_b)
    a_to_b = await a.connect(B)
    await a_to_b.send(b"before")
    await b_inbox.wait_for(lambda: b_inbox.payloads(A) == [b"before"])
    await a_to_b.send(b"in flight")
    net.crash(B)

    with pytest.raises(ConnectionClosed):
        await a_to_b.receive()
    with pytest.raises(ConnectionClosed):
        await a_to_b.send(b"after crash")
    await trio.testing.wait_all_tasks_blocked()
    assert len(serve_errors) == 1, serve_errors
    assert b_inbox.payloads(A) == [b"before"]
    assert net.statistics().dropped_crash == 1
    # The crashed incarnation can do nothing.
    with pytest.raises(TransportError):
        await b.connect(A)
    with pytest.raises(TransportError):
        await b.wait_runnable()
    # Nobody listens there any more.
    before = trio.current_time()
    with pytest.raises(TransportError, match="connection refused"):
        await a.connect(B)
    assert trio.current_time() > before  # refused after one latency, not at once

    # Restart: a fresh process at the same address serves again.
    b2 = net.transport(B)
    assert b2 is not b
    assert net.transport(B) is b2
    b2_inbox = Inbox()
    await nursery.start(b2.serve, B, b2_inbox)
    conn = await a.connect(B)
    await conn.send(b"hello again")
    await b2_inbox.wait_for(lambda: b2_inbox.payloads(A) == [b"hello again"])


async def test_crash_reaches_clients_of_the_crashed_process(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, 0)
    _, inboxes = await start(nursery, net, A)
    b_to_a = await net.transport(B).connect(A)
    await b_to_a.send(b"hi")
    await inboxes[A].wait_for(lambda: inboxes[A].payloads(B) == [b"hi"])
    net.crash(B)
    with pytest.raises(ConnectionClosed):
        await b_to_a.send(b"from the dead")
    await inboxes[A].wait_for(lambda: inboxes[A].ended == [B])


# --- bounds and bookkeeping -------------------------------------------------------------------


async def test_receive_buffer_is_bounded(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, 0)
    accepted: list[Connection] = []
    idle = trio.Event()

    async def never_reads(conn: Connection) -> None:
        accepted.append(conn)
        await idle.wait()

    await nursery.start(net.transport(B).serve, B, never_reads)
    conn = await net.transport(A).connect(B)
    for i in range(10_005):
        await conn.send(b"%d" % i)
    await trio.sleep(1)
    assert net.statistics().dropped_overflow == 5
    assert await accepted[0].receive() == b"0"
    idle.set()


async def test_statistics_are_a_frozen_snapshot(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    net = await open_net(nursery, 0)
    _, inboxes = await start(nursery, net, B)
    before = net.statistics()
    conn = await net.transport(A).connect(B)
    await conn.send(b"12345")
    await inboxes[B].wait_for(lambda: inboxes[B].payloads(A) == [b"12345"])
    after = net.statistics()
    assert isinstance(after, SimNetworkStatistics)
    assert before.frames_sent == 0
    assert (after.frames_sent, after.frames_delivered, after.bytes_delivered) == (1, 1, 5)
    assert after.connections_opened == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.frames_sent = 7  # type: ignore[misc]


async def test_only_one_pump(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    net = await open_net(nursery, 0)
    with pytest.raises(RuntimeError, match="already running"):
        await net.run()


async def test_serve_only_on_the_process_address(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(0)
    with pytest.raises(TransportError, match=re.escape(f"cannot listen on {B}")):
        await net.transport(A).serve(B, Inbox())
