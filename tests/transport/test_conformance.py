"""The Transport contract (gossipkv/transport/_base.py), run over TcpTransport and SimNetwork.

Every test takes ``clock`` so the simulated run uses an autojump MockClock (TCP: the real clock).
"""

from __future__ import annotations

import contextlib

import pytest
import trio

from gossipkv import ConnectionClosed, DecodeError, TransportError
from gossipkv._codec import frame_header
from gossipkv._errors import ConnectionRefused
from gossipkv.transport import Connection, ReceiveBudget, _tcp

from .conftest import Harness

# A guard against hangs only; no assertion depends on how long anything takes.
HANG_GUARD = 10


async def echo(conn: Connection) -> None:
    try:
        while True:
            await conn.send(await conn.receive())
    except ConnectionClosed:
        pass


class Recorder:
    """A server handler that records what each connection received and how it ended."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.errors: list[Exception] = []
        self.done = trio.Event()

    async def __call__(self, conn: Connection) -> None:
        try:
            while True:
                self.payloads.append(await conn.receive())
        except (ConnectionClosed, DecodeError) as exc:
            self.errors.append(exc)
        finally:
            self.done.set()


async def test_round_trip(harness: Harness, clock: object) -> None:
    address = await harness.serve(echo)
    conn = await harness.connect(address)
    for payload in (b"hello", b"", bytes(range(256))):
        await conn.send(payload)
        assert await conn.receive() == payload
    await conn.aclose()


async def test_thousand_frames_arrive_in_order(harness: Harness, clock: object) -> None:
    recorder = Recorder()
    address = await harness.serve(recorder)
    conn = await harness.connect(address)
    sent = [i.to_bytes(4, "big") * (i % 7 + 1) for i in range(1000)]
    for payload in sent:
        await conn.send(payload)
    await conn.aclose()
    with trio.fail_after(HANG_GUARD):
        await recorder.done.wait()
    assert recorder.payloads == sent
    assert [type(e) for e in recorder.errors] == [ConnectionClosed]


async def test_many_concurrent_connections(harness: Harness, clock: object) -> None:
    address = await harness.serve(echo)
    results: dict[int, list[bytes]] = {}

    async def client(i: int) -> None:
        conn = await harness.connect(address)
        got = []
        for j in range(20):
            await conn.send(f"{i}/{j}".encode())
            got.append(await conn.receive())
        results[i] = got
        await conn.aclose()

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(client, i)
    assert results == {i: [f"{i}/{j}".encode() for j in range(20)] for i in range(50)}


async def test_both_directions_at_once(harness: Harness, clock: object) -> None:
    from_client = [b"c%d" % i for i in range(200)]
    from_server = [b"s%d" % i for i in range(200)]
    server_got: list[bytes] = []

    async def handler(conn: Connection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_all, conn, from_server)
            server_got.extend([await conn.receive() for _ in from_client])
        with contextlib.suppress(ConnectionClosed):
            await conn.receive()  # wait for the client's close so our frames are not cut short

    address = await harness.serve(handler)
    conn = await harness.connect(address)
    client_got: list[bytes] = []
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_all, conn, from_client)
            client_got.extend([await conn.receive() for _ in from_server])
    await conn.aclose()
    assert client_got == from_server
    assert server_got == from_client


async def _send_all(conn: Connection, payloads: list[bytes]) -> None:
    for payload in payloads:
        await conn.send(payload)


async def test_frames_up_to_max_frame_pass(harness: Harness, clock: object) -> None:
    address = await harness.serve(echo)
    conn = await harness.connect(address)
    for size in (harness.max_frame - 1, harness.max_frame):
        payload = bytes([size % 251]) * size
        await conn.send(payload)
        assert await conn.receive() == payload
    await conn.aclose()


async def test_frame_over_max_frame_is_too_large_at_receiver(
    harness: Harness, clock: object
) -> None:
    recorder = Recorder()
    address = await harness.serve(recorder)
    conn = await harness.connect(address)
    await conn.send(b"ok")
    await conn.send(b"x" * (harness.max_frame + 1))
    with trio.fail_after(HANG_GUARD):
        await recorder.done.wait()
    assert recorder.payloads == [b"ok"]
    [error] = recorder.errors
    assert isinstance(error, DecodeError)
    assert error.reason == "too_large"
    await conn.aclose()


async def test_close_ends_the_other_side_after_pending_frames(
    harness: Harness, clock: object
) -> None:
    recorder = Recorder()
    address = await harness.serve(recorder)
    conn = await harness.connect(address)
    for payload in (b"a", b"b", b"c"):
        await conn.send(payload)
    await conn.aclose()
    with trio.fail_after(HANG_GUARD):
        await recorder.done.wait()
    assert recorder.payloads == [b"a", b"b", b"c"]
    assert [type(e) for e in recorder.errors] == [ConnectionClosed]


async def test_server_close_reaches_client(harness: Harness, clock: object) -> None:
    async def greet_and_leave(conn: Connection) -> None:
        await conn.send(b"bye")  # the handler returns: the transport closes the connection

    address = await harness.serve(greet_and_leave)
    conn = await harness.connect(address)
    with trio.fail_after(HANG_GUARD):
        assert await conn.receive() == b"bye"
        with pytest.raises(ConnectionClosed):
            await conn.receive()
    await conn.aclose()


async def test_local_close_is_idempotent_and_final(harness: Harness, clock: object) -> None:
    address = await harness.serve(echo)
    conn = await harness.connect(address)
    await conn.aclose()
    await conn.aclose()
    with pytest.raises(ConnectionClosed):
        await conn.send(b"late")
    with pytest.raises(ConnectionClosed):
        await conn.receive()


async def test_close_wakes_a_blocked_receive(harness: Harness, clock: object) -> None:
    address = await harness.serve(echo)
    conn = await harness.connect(address)
    outcome: list[BaseException] = []

    async def reader() -> None:
        try:
            await conn.receive()
        except ConnectionClosed as exc:
            outcome.append(exc)

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await conn.aclose()
    assert len(outcome) == 1


async def test_connect_to_nothing_is_a_transport_error(harness: Harness, clock: object) -> None:
    # Refused, precisely: failure detection treats a refusal (nothing listens: a crash) as
    # stronger evidence than silence.
    with trio.fail_after(HANG_GUARD), pytest.raises(ConnectionRefused, match="cannot connect"):
        await harness.connect(harness.dead_address())
    assert issubclass(ConnectionRefused, TransportError)


async def test_serve_on_an_address_in_use_is_a_transport_error(
    harness: Harness, clock: object
) -> None:
    address = await harness.serve(echo)
    other = harness.transport_at(address)
    with pytest.raises(TransportError, match="in use"):
        await other.serve(address, echo)


async def test_a_failing_handler_does_not_stop_the_server(
    harness: Harness, clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def flaky(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await echo(conn)

    address = await harness.serve(flaky)
    first = await harness.connect(address)
    with trio.fail_after(HANG_GUARD), pytest.raises(ConnectionClosed):
        await first.receive()
    second = await harness.connect(address)
    await second.send(b"still here")
    assert await second.receive() == b"still here"
    await first.aclose()
    await second.aclose()
    assert "handler bug" in caplog.text


async def test_remote_address_is_host_port(harness: Harness, clock: object) -> None:
    seen: list[str] = []

    async def handler(conn: Connection) -> None:
        seen.append(conn.remote_address)
        await echo(conn)

    address = await harness.serve(handler)
    conn = await harness.connect(address)
    await conn.send(b"x")
    await conn.receive()
    assert conn.remote_address == address
    host, _, port = seen[0].rpartition(":")
    assert host and port.isdigit()
    await conn.aclose()


# --- per-connection limits: frame size, frame deadline, receive budget ------------------------------


async def test_each_connection_has_its_own_frame_limit(harness: Harness, clock: object) -> None:
    """A node accepts only small frames until the hello is done, then raises the limit."""
    got: list[bytes] = []
    errors: list[Exception] = []

    async def handler(conn: Connection) -> None:
        assert conn.max_frame == harness.max_frame
        conn.max_frame = 100
        try:
            got.append(await conn.receive())  # the "hello"
            conn.max_frame = harness.max_frame
            got.append(await conn.receive())
            conn.max_frame = 10
            got.append(await conn.receive())
        except DecodeError as exc:
            errors.append(exc)
        await conn.send(b"done")

    address = await harness.serve(handler)
    conn = await harness.connect(address)
    for payload in (b"h" * 100, b"x" * harness.max_frame, b"y" * 11):
        await conn.send(payload)
    with trio.fail_after(HANG_GUARD):
        assert await conn.receive() == b"done"
    assert got == [b"h" * 100, b"x" * harness.max_frame]
    assert [e.reason for e in errors if isinstance(e, DecodeError)] == ["too_large"]
    await conn.aclose()


async def test_a_body_slower_than_frame_timeout_fails_the_connection(
    harness: Harness, clock: object
) -> None:
    recorder = Recorder()
    budget = ReceiveBudget(1 << 20)
    address = await harness.serve(
        recorder, max_frame=1 << 20, frame_timeout=0.5, receive_budget=budget
    )
    stalled = await harness.send_stalled(address, 200_000)
    with trio.fail_after(HANG_GUARD):
        await recorder.done.wait()
    [error] = recorder.errors
    assert isinstance(error, DecodeError)
    assert error.reason == "frame_timeout"
    assert budget.reserved == 0  # the reservation went back with the frame
    await stalled.aclose()


class WatchedBudget(ReceiveBudget):
    """A receive budget a test can wait on."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.changed = trio.lowlevel.ParkingLot()

    async def reserve(self, size: int) -> int:
        granted = await super().reserve(size)
        self.changed.unpark_all()
        return granted

    def release(self, size: int) -> None:
        super().release(size)
        self.changed.unpark_all()

    async def wait_reserved(self, expected: int) -> None:
        while self.reserved != expected:
            await self.changed.park()


async def test_large_bodies_wait_for_the_receive_budget(harness: Harness, clock: object) -> None:
    """A stalled large body holds its reservation until its deadline; a second large body
    waits for it (the sender is pushed back), then arrives; small frames never wait."""
    budget = WatchedBudget(300_000)
    order: list[str] = []
    large_arrived = trio.Event()

    async def handler(conn: Connection) -> None:
        try:
            while True:
                payload = await conn.receive()
                order.append(f"{len(payload)}")
                if len(payload) == 150_000:
                    large_arrived.set()
        except DecodeError as exc:
            order.append(exc.reason)
        except ConnectionClosed:
            pass

    address = await harness.serve(
        handler, max_frame=1 << 20, frame_timeout=2.0, receive_budget=budget
    )
    stalled = await harness.send_stalled(address, 200_000)
    with trio.fail_after(HANG_GUARD):
        await budget.wait_reserved(200_000)
    conn = await harness.connect(address)
    await conn.send(b"s" * 1000)  # small: received at once
    await conn.send(b"L" * 150_000)  # does not fit next to the stalled 200,000
    with trio.fail_after(HANG_GUARD):
        await large_arrived.wait()
    assert order == ["1000", "frame_timeout", "150000"]
    await conn.aclose()
    await stalled.aclose()
    with trio.fail_after(HANG_GUARD):
        await budget.wait_reserved(0)


async def test_budget_reservations_are_fifo_and_cancellation_safe() -> None:
    budget = ReceiveBudget(100)
    first = await budget.reserve(80)
    granted: list[int] = []

    async def take(size: int) -> None:
        granted.append(await budget.reserve(size))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, 50)  # does not fit: waits, then is cancelled
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert (budget.reserved, budget.waiting) == (80, 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, 1000)  # larger than the budget: waits for all of it
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, 10)  # would fit, but waits its turn behind the first
        await trio.testing.wait_all_tasks_blocked()
        assert granted == []
        budget.release(first)
        await trio.testing.wait_all_tasks_blocked()
        assert granted == [100]
        budget.release(100)
    assert granted == [100, 10]
    assert budget.reserved == 10


# --- TCP only: bytes no well-behaved sender produces --------------------------------------------


@pytest.fixture
def raw_tcp(transport_kind: str) -> None:
    if transport_kind not in ("tcp", "tcp-stream"):
        pytest.skip("raw byte streams exist only over TCP")


async def test_tcp_length_over_limit_fails_before_the_body(
    harness: Harness, clock: object, raw_tcp: None
) -> None:
    recorder = Recorder()
    address = await harness.serve(recorder)
    host, _, port = address.rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    # Only the header: a receiver that tried to read the body would wait forever.
    await stream.send_all((harness.max_frame + 1).to_bytes(4, "big"))
    with trio.fail_after(HANG_GUARD):
        await recorder.done.wait()
    [error] = recorder.errors
    assert isinstance(error, DecodeError)
    assert error.reason == "too_large"
    await stream.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        frame_header(b"x" * 100) + b"x" * 10,  # EOF inside the body
        b"\x00\x00",  # EOF inside the header
    ],
    ids=["body", "header"],
)
async def test_tcp_eof_inside_a_frame_is_truncated(
    harness: Harness, clock: object, raw_tcp: None, raw: bytes
) -> None:
    recorder = Recorder()
    address = await harness.serve(recorder)
    host, _, port = address.rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(frame_header(b"ok") + b"ok" + raw)
    await stream.aclose()
    with trio.fail_after(HANG_GUARD):
        await recorder.done.wait()
    assert recorder.payloads == [b"ok"]
    [error] = recorder.errors
    assert isinstance(error, DecodeError)
    assert error.reason == "truncated"


async def test_tcp_a_reader_of_a_flooded_socket_yields_and_can_be_cancelled(
    harness: Harness, clock: object, raw_tcp: None
) -> None:
    """Plaintext frames are read from the socket itself, with no trip through the scheduler
    when data is there; a sender that keeps the socket full must still let the other tasks run
    and let a cancellation through, long before the reader catches up."""
    frames = [bytes([i % 256]) * 1000 for i in range(4000)]  # 4 MB: far more than one read
    sent = trio.Event()

    async def flood(conn: Connection) -> None:
        await conn.send_many(frames)
        sent.set()
        with contextlib.suppress(ConnectionClosed):
            await conn.receive()  # until the client goes away

    address = await harness.serve(flood)
    conn = await harness.connect(address)
    await conn.receive()  # the flood has begun
    ticks = 0
    read = 1

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.lowlevel.checkpoint()
            ticks += 1

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            for _ in range(2000):
                await conn.receive()
                read += 1
            nursery.cancel_scope.cancel()
        assert ticks > 0  # the ticker ran while the reader had data all along
        with trio.CancelScope() as scope:
            scope.cancel()
            while read < len(frames):
                await conn.receive()
                read += 1
        assert scope.cancelled_caught and read < len(frames)
        for _ in range(len(frames) - read):  # nothing was lost to the cancellation
            assert await conn.receive() == frames[read]
            read += 1
        await sent.wait()
    await conn.aclose()


async def test_tcp_plaintext_frames_use_the_os_socket(
    harness: Harness, clock: object, raw_tcp: None
) -> None:
    """The fast path finds trio's OS socket: a trio release that moves it fails here, rather
    than silently sending every frame through the slower stream path (``tcp-stream`` runs the
    whole contract over that fallback)."""
    address = await harness.serve(echo)
    host, _, port = address.rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    raw = _tcp._raw_socket(stream)
    if harness.kind == "tcp":
        assert raw is not None and raw.fileno() == stream.socket.fileno()
    else:
        assert raw is None
    await stream.aclose()
