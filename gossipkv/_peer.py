"""One multiplexed connection to a peer or client (Single Socket Channel, Request Pipeline).

A :class:`Channel` wraps a transport connection after the ``hello`` handshake. Either end may send
requests over it; each carries an id, responses echo it, and the waiting requests are kept in a
Request Waiting List keyed by id, so many requests are in flight at once. A frame that fails to
decode closes the channel and bumps a counter by reason; the rest of the peer is unaffected.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from . import _codec
from ._errors import ConnectionClosed, DecodeError, HandshakeError, RemoteError
from ._messages import PROTOCOL_VERSION, ErrorReply, Hello, Kind, Message, Refused
from .transport._base import Connection

log = logging.getLogger("gossipkv.peer")

RequestHandler = Callable[["Channel", Message], Awaitable[Message]]
OnewayHandler = Callable[["Channel", Message], Awaitable[None]]


class TransportCounters:
    """Frame and byte counters shared by all channels of one node."""

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()


@dataclass(slots=True)
class _Waiter:
    event: trio.Event
    kind: Kind | None = None
    message: Message | None = None


async def _receive_message(
    conn: Connection, max_frame: int, counters: TransportCounters
) -> Message:
    payload = await conn.receive()
    counters.frames_in += 1
    counters.bytes_in += len(payload)
    return _codec.decode(payload, max_frame=max_frame).message


def check_hello(hello: Hello, *, cluster: str, own_node_id: str | None) -> Refused | None:
    """Why ``hello`` must be refused, or ``None`` when it is acceptable."""
    if hello.proto != PROTOCOL_VERSION:
        return Refused(
            "protocol",
            f"protocol version mismatch: peer speaks {hello.proto}, this peer speaks "
            f"{PROTOCOL_VERSION}",
        )
    if hello.cluster != cluster:
        return Refused(
            "cluster",
            f"cluster name mismatch: peer {hello.node_id!r} is in cluster {hello.cluster!r}, "
            f"this peer is in cluster {cluster!r}",
        )
    if own_node_id is not None and hello.node_id == own_node_id:
        return Refused("identity", f"peer claims this peer's own name {own_node_id!r}")
    return None


async def handshake(
    conn: Connection,
    ours: Hello,
    *,
    initiator: bool,
    max_frame: int,
    counters: TransportCounters,
    own_node_id: str | None,
) -> Hello:
    """Exchange ``hello`` frames; returns the other side's.

    Raises:
      HandshakeError: refused by either side (wrong cluster, protocol or identity).
      ConnectionClosed, DecodeError: the connection failed during the handshake.
    """

    async def send(msg: Message) -> None:
        payload = _codec.encode(Kind.ONEWAY, 0, msg)
        counters.frames_out += 1
        counters.bytes_out += len(payload)
        await conn.send(payload)

    if initiator:
        await send(ours)
    theirs = await _receive_message(conn, max_frame, counters)
    if isinstance(theirs, Refused):
        raise HandshakeError(theirs.reason, f"refused by {conn.remote_address}: {theirs.message}")
    if not isinstance(theirs, Hello):
        raise DecodeError("bad_shape", f"expected hello, got {theirs.TAG}")
    refusal = check_hello(theirs, cluster=ours.cluster, own_node_id=own_node_id)
    if refusal is not None:
        counters.refused[refusal.reason] += 1
        try:
            await send(refusal)
        except ConnectionClosed:
            pass
        raise HandshakeError(refusal.reason, refusal.message)
    if not initiator:
        await send(ours)
    return theirs


class Channel:
    """A handshaken, multiplexed connection.

    Args:
      conn: the transport connection.
      remote: the other side's ``hello``.
      on_request: answers an incoming request (its exceptions become error replies).
      on_oneway: handles an incoming one-way message.
      max_frame: decode limit.
      counters: shared counters.
      max_inflight: incoming requests handled at once; beyond that the reader stops reading,
        which pushes back on the sender (backpressure, never an unbounded queue).
    """

    def __init__(
        self,
        conn: Connection,
        remote: Hello,
        *,
        on_request: RequestHandler,
        on_oneway: OnewayHandler,
        max_frame: int,
        counters: TransportCounters,
        max_inflight: int = 64,
    ) -> None:
        self.conn = conn
        self.remote = remote
        self._on_request = on_request
        self._on_oneway = on_oneway
        self._max_frame = max_frame
        self._counters = counters
        self._limiter = trio.Semaphore(max_inflight)
        # One writer per connection fed by a bounded queue: frames queued while a write is in
        # progress go out together in the next one (Request Batch); a full queue pushes back.
        self._outbox, self._outbox_reader = trio.open_memory_channel[bytes](max_inflight * 4)
        self._unsent = 0
        self._flushed = trio.Event()
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self.closed = False
        self._closed_event = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read frames until the connection ends; dispatch requests and responses."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, nursery.cancel_scope)
                task_status.started()
                await self._read_loop(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self._mark_closed()
            with trio.move_on_after(1.0, shield=True):
                await self.conn.aclose()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                payload = await self.conn.receive()
                self._counters.frames_in += 1
                self._counters.bytes_in += len(payload)
                env = _codec.decode(payload, max_frame=self._max_frame)
            except ConnectionClosed:
                return
            except DecodeError as exc:
                self._counters.dropped[exc.reason] += 1
                log.warning("closing connection to %s: %s", self.conn.remote_address, exc)
                return
            if env.kind is Kind.REQUEST:
                await self._limiter.acquire()
                nursery.start_soon(self._answer, env.request_id, env.message)
            elif env.kind in (Kind.RESPONSE, Kind.ERROR):
                waiter = self._waiters.pop(env.request_id, None)
                if waiter is None:
                    self._counters.dropped["unexpected_response"] += 1
                    continue
                waiter.kind, waiter.message = env.kind, env.message
                waiter.event.set()
            else:
                try:
                    await self._on_oneway(self, env.message)
                except Exception as exc:
                    # A peer must never crash because of what it received.
                    self._counters.dropped["handler_error"] += 1
                    log.warning(
                        "one-way %s from %s failed: %r",
                        env.message.TAG,
                        self.conn.remote_address,
                        exc,
                    )

    async def _answer(self, request_id: int, message: Message) -> None:
        try:
            try:
                reply: Message = await self._on_request(self, message)
                kind = Kind.RESPONSE
            except RemoteError as exc:
                reply, kind = ErrorReply(exc.code, str(exc)), Kind.ERROR
            except (ValueError, TypeError) as exc:
                reply, kind = ErrorReply("bad_request", str(exc)), Kind.ERROR
            except Exception as exc:
                # A handler bug answers one request with an error; it never takes the peer down.
                log.exception("request %s from %s failed", message.TAG, self.conn.remote_address)
                reply, kind = ErrorReply("internal", f"internal error: {exc!r}"), Kind.ERROR
            await self._send(kind, request_id, reply)
        except ConnectionClosed:
            pass
        finally:
            self._limiter.release()

    async def _write_loop(self, scope: trio.CancelScope) -> None:
        batch: list[bytes] = []
        try:
            async for payload in self._outbox_reader:
                batch.append(payload)
                while len(batch) < 128:
                    try:
                        batch.append(self._outbox_reader.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self.conn.send_many(batch)
                self._unsent -= len(batch)
                batch.clear()
                if self._unsent == 0:
                    self._flushed.set()
                    self._flushed = trio.Event()
        except ConnectionClosed:
            pass
        # The connection cannot carry anything more: end the channel.
        self._mark_closed()
        scope.cancel()

    async def _send(self, kind: Kind, request_id: int, message: Message) -> None:
        if self.closed:
            raise ConnectionClosed("connection is closed")
        payload = _codec.encode(kind, request_id, message)
        self._unsent += 1
        try:
            await self._outbox.send(payload)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            self._unsent -= 1
            raise ConnectionClosed("connection is closed") from exc
        except BaseException:
            self._unsent -= 1
            raise
        self._counters.frames_out += 1
        self._counters.bytes_out += len(payload)

    async def request(self, message: Message) -> Message:
        """Send a request and wait for its response.

        Raises:
          RemoteError: the other side answered with an error.
          ConnectionClosed: the channel closed before the response came.
        """
        request_id = next(self._ids)
        waiter = _Waiter(trio.Event())
        self._waiters[request_id] = waiter
        try:
            await self._send(Kind.REQUEST, request_id, message)
            await waiter.event.wait()
        finally:
            self._waiters.pop(request_id, None)
        if waiter.message is None:
            raise ConnectionClosed(f"connection to {self.conn.remote_address} closed")
        if waiter.kind is Kind.ERROR:
            err = waiter.message
            if isinstance(err, ErrorReply):
                raise RemoteError(err.code, err.message)
            raise RemoteError("error", f"error reply {err.TAG}")
        return waiter.message

    async def notify(self, message: Message) -> None:
        """Send a one-way message."""
        await self._send(Kind.ONEWAY, 0, message)

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (or the channel closed)."""
        while self._unsent > 0 and not self.closed:
            await self._flushed.wait()

    def _mark_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._outbox.close()
        self._flushed.set()
        for waiter in self._waiters.values():
            waiter.event.set()  # message stays None: the request sees ConnectionClosed
        self._waiters.clear()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def aclose(self) -> None:
        """Close after writing what was already queued (bounded: a stuck peer gets 1 s)."""
        if not self.closed:
            with trio.move_on_after(1.0):
                await self.flush()
        self._mark_closed()
        await self.conn.aclose()
