"""One multiplexed connection to a peer or client (Single Socket Channel, Request Pipeline).

A :class:`Channel` wraps a transport connection after the ``hello`` handshake. Either end may send
requests over it; each carries an id, responses echo it, and the waiting requests are kept in a
Request Waiting List keyed by id, so many requests are in flight at once. A frame that fails to
decode closes the channel and bumps a counter by reason; the rest of the peer is unaffected.

Each channel bounds what it holds: requests in flight (``max_inflight``), frames and bytes queued
for sending (``max_queued`` frames, ``max_outbound_bytes``), and how long it stays open with
nothing to do (``idle_timeout``).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from . import _codec
from ._batcher import BATCH_OP_BYTES, Answers, Op, ReplicaBatcher, size_bound
from ._errors import ConnectionClosed, DecodeError, HandshakeError, RemoteError
from ._messages import (
    PROTOCOL_VERSION,
    Envelope,
    ErrorReply,
    Hello,
    Kind,
    Message,
    Refused,
    ReplicaBatch,
    ReplicaGet,
    ReplicaPut,
)
from ._outbox import Outbox, TransportCounters
from .transport._base import Connection
from .transport._tls import TLSHandshakeFailed

log = logging.getLogger("gossipkv.peer")

RequestHandler = Callable[["Channel", Message], Awaitable[Message]]
OnewayHandler = Callable[["Channel", Message], Awaitable[None]]


ReplyCallback = Callable[[Message | BaseException], None]


class Deferred:
    """Returned by a nowait handler that will answer later through the ``respond`` it got."""


DEFERRED = Deferred()
#: ``(channel, message, respond)``: the reply now, ``None`` to hand the request to a task, or
#: ``DEFERRED`` after arranging for ``respond(reply or exception)`` to be called exactly once.
NowaitHandler = Callable[["Channel", Message, ReplyCallback], "Message | Deferred | None"]


@dataclass(slots=True)
class _Waiter:
    """One request in the Request Waiting List: woken by ``event`` or told through ``callback``."""

    event: trio.Event | None = None
    callback: ReplyCallback | None = None
    kind: Kind | None = None
    message: Message | None = None
    #: A batch frame's waiter: the ids and requests of the ops it carries, in order.
    batch: list[Op] | None = None


def reply_for_exception(message: Message, exc: Exception, remote: str) -> ErrorReply:
    """The error reply a request handler's exception turns into (never a crash of the peer)."""
    if isinstance(exc, RemoteError):
        return ErrorReply(exc.code, str(exc))
    if isinstance(exc, (ValueError, TypeError)):
        return ErrorReply("bad_request", str(exc))
    # A handler bug answers one request with an error; it never takes the peer down.
    log.error("request %s from %s failed", message.TAG, remote, exc_info=exc)
    return ErrorReply("internal", f"internal error: {exc!r}")


def _forbidden(reason: str, message: Message) -> ErrorReply:
    """The answer to a request this side of the connection may not send."""
    who = "members" if reason.startswith("member") else "operators"
    return ErrorReply("forbidden", f"only {who} may send {message.TAG}")


class _WaitingList:
    """The Request Waiting List: this side's requests that wait for their replies, by id."""

    __slots__ = ("_counters", "_ids", "_remote", "pending")

    def __init__(self, remote: str, counters: TransportCounters) -> None:
        self.pending: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._remote = remote
        self._counters = counters

    def next_id(self) -> int:
        return next(self._ids)

    def wake(self, waiter: _Waiter) -> None:
        """Wake a request's waiter, or tell its callback the outcome."""
        if waiter.event is not None:
            waiter.event.set()
        elif waiter.callback is not None:
            self.tell(waiter.callback, _outcome(waiter, self._remote))

    def tell(self, callback: ReplyCallback, outcome: Message | BaseException) -> None:
        try:
            callback(outcome)
        except Exception:
            # The callback belongs to this peer; its bug must not end the connection.
            self._counters.dropped["callback_error"] += 1
            log.exception("reply callback for %s failed", self._remote)

    def unbatch(self, answers: Answers, resend: Callable[[int, Message], None]) -> None:
        """Hand each op of a batch its answer; ``resend`` those the reply had no room for."""
        pending = self.pending
        for request_id, sent in answers.again:
            if request_id in pending:
                resend(request_id, sent)
        for request_id, kind, message in answers.done:
            waiter = pending.pop(request_id, None)
            if waiter is not None:  # None: cancelled
                waiter.kind, waiter.message = kind, message
                self.wake(waiter)

    def cancel(self, request_id: int, batch_id: int | None) -> None:
        """Forget a request; and its batch ``batch_id`` once all the batch's ops are forgotten."""
        pending = self.pending
        pending.pop(request_id, None)
        if batch_id is None:
            return
        batch = pending.get(batch_id)
        if batch is not None and batch.batch is not None:
            if not any(rid in pending for rid, _ in batch.batch):
                del pending[batch_id]

    def close(self) -> None:
        """Wake every waiter with no reply: each requester sees ``ConnectionClosed``."""
        waiters = list(self.pending.values())
        self.pending.clear()
        for waiter in waiters:
            self.wake(waiter)


class _Responder:
    """The ``respond`` callback of one request: the first call answers, later ones are ignored."""

    __slots__ = ("_channel", "_message", "_request_id")

    def __init__(self, channel: Channel, request_id: int, message: Message) -> None:
        self._channel: Channel | None = channel
        self._request_id = request_id
        self._message = message

    def __call__(self, reply: Message | BaseException) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel._respond(self._request_id, self._message, reply)


def _outcome(waiter: _Waiter, remote: str) -> Message | BaseException:
    if waiter.message is None:
        return ConnectionClosed(f"connection to {remote} closed")
    if waiter.kind is Kind.ERROR:
        err = waiter.message
        if isinstance(err, ErrorReply):
            return RemoteError(err.code, err.message)
        return RemoteError("error", f"error reply {err.TAG}")
    return waiter.message


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


def verify_certificate(conn: Connection, initiator: bool, hello: Hello) -> Refused | None:
    """Whether the TLS certificate of ``conn`` may make the claim of ``hello`` (issue 13): a
    member's certificate names it and has the ``peer`` role; any role may be a client (its role
    then limits what it may send); the peer a connection was opened to is always a member."""
    identity = conn.tls_identity
    if identity is None:
        return Refused("tls_identity", "the TLS certificate carries no gossipkv name and role")
    if hello.node_id == "client" and not initiator:
        return None
    if identity.role != "peer":
        return Refused(
            "tls_identity",
            f"a {identity.role} certificate ({identity.name!r}) cannot act as member "
            f"{hello.node_id!r}",
        )
    if identity.name != hello.node_id:
        return Refused(
            "tls_identity",
            f"the certificate names {identity.name!r}, but the hello claims {hello.node_id!r}",
        )
    return None


async def handshake(
    conn: Connection,
    ours: Hello,
    *,
    initiator: bool,
    max_frame: int,
    counters: TransportCounters,
    own_node_id: str | None,
    admit: Callable[[Hello], bool] | None = None,
    verify: Callable[[Hello], Refused | None] | None = None,
) -> Hello:
    """Exchange ``hello`` frames; returns the other side's.

    ``verify`` (either side) checks the other side's ``hello`` against what the connection
    proves (its TLS certificate): a refusal it returns is sent and raised like any other.
    ``admit`` (responder side) sees an acceptable ``hello`` before ours is sent; when it returns
    False nothing is sent and :exc:`HandshakeError` ``limit`` is raised (the caller closes).

    A failed TLS handshake (plaintext meeting TLS, a refused certificate) is counted in
    ``counters.refused`` under its reason and raised as :exc:`HandshakeError` with that reason;
    the responder first tells a plaintext end, in plaintext, why it is refused.

    Raises:
      HandshakeError: refused by either side (wrong cluster, protocol, identity or TLS), or by
        ``admit``.
      ConnectionClosed, DecodeError: the connection failed during the handshake.
    """
    try:
        return await _handshake(
            conn, ours, initiator, max_frame, counters, own_node_id, admit, verify
        )
    except TLSHandshakeFailed as exc:
        counters.refused[exc.reason] += 1
        if not initiator and exc.reason in ("tls_required", "tls_not_enabled"):
            why = (
                "this peer requires TLS (connect with --tls-dir)"
                if exc.reason == "tls_required"
                else "this peer runs without TLS"
            )
            try:
                await conn.send_in_clear(_codec.encode(Kind.ONEWAY, 0, Refused(exc.reason, why)))
            except ConnectionClosed:
                pass
        raise HandshakeError(exc.reason, str(exc)) from None


async def _handshake(
    conn: Connection,
    ours: Hello,
    initiator: bool,
    max_frame: int,
    counters: TransportCounters,
    own_node_id: str | None,
    admit: Callable[[Hello], bool] | None,
    verify: Callable[[Hello], Refused | None] | None,
) -> Hello:

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
    if refusal is None and verify is not None:
        refusal = verify(theirs)
    if refusal is not None:
        counters.refused[refusal.reason] += 1
        try:
            await send(refusal)
        except ConnectionClosed:
            pass
        raise HandshakeError(refusal.reason, refusal.message)
    if admit is not None and not admit(theirs):
        raise HandshakeError("limit", f"{theirs.node_id!r} is over a connection limit here")
    if not initiator:
        await send(ours)
    return theirs


class IdleTimer:
    """When a connection has been idle for ``timeout`` seconds: nothing received meanwhile
    (:meth:`touch`), and nothing else keeping it busy."""

    __slots__ = ("_last", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._last = trio.current_time()

    def touch(self) -> None:
        """A frame arrived."""
        self._last = trio.current_time()

    async def wait(self, busy: Callable[[], bool]) -> None:
        """Return once ``timeout`` has passed since the last frame while not ``busy``; a busy
        connection is looked at again one period later."""
        while True:
            await trio.sleep_until(self._last + self.timeout)
            now = trio.current_time()
            if now < self._last + self.timeout:
                continue  # a frame came meanwhile
            if not busy():
                return
            self._last = now


class Channel:
    """A handshaken, multiplexed connection.

    Args:
      conn: the transport connection.
      remote: the other side's ``hello``.
      on_request: answers an incoming request (its exceptions become error replies).
      on_oneway: handles an incoming one-way message.
      on_request_nowait: optional fast path, called in the reader for every request: returns the
        reply when it can answer without waiting (no I/O, no lock held), ``DEFERRED`` when it
        will answer through the ``respond`` callback it is given (replies gathered by callbacks,
        no task), or ``None`` to hand the request to ``on_request`` in a task of its own. Its
        exceptions become error replies.
      max_frame: decode limit.
      counters: shared counters.
      max_inflight: incoming requests handled at once; beyond that the reader stops reading,
        which pushes back on the sender (backpressure, never an unbounded queue).
      max_outbound_bytes: bytes queued for sending beyond which senders that may wait do, and
        the reader stops taking new requests, so TCP pushes back on a side that does not read
        its replies (see :class:`Outbox`).
      idle_timeout: close the channel after this many seconds without receiving a frame, with
        no request in flight either way and no subscription (see :attr:`subscriptions`);
        counted as the refusal ``idle_timeout``.
      refuse: the reason this side may not send a message (a client speaking for a member),
        or ``None``; a refused message is answered ``forbidden`` and ends the channel.
      batch_requests: whether small replica requests started with :meth:`request_nowait`
        travel together (see :class:`ReplicaBatcher`).

    Attributes:
      subscriptions: watch subscriptions served over this channel (kept by the node); a channel
        with one never idles out.
    """

    def __init__(
        self,
        conn: Connection,
        remote: Hello,
        *,
        on_request: RequestHandler,
        on_oneway: OnewayHandler,
        on_request_nowait: NowaitHandler | None = None,
        max_frame: int,
        counters: TransportCounters,
        max_inflight: int = 64,
        max_outbound_bytes: int = 8 * 1024 * 1024,
        idle_timeout: float = math.inf,
        refuse: Callable[[Message], str | None] | None = None,
        batch_requests: bool = True,
    ) -> None:
        self.conn = conn
        self.remote = remote
        self._refuse = refuse
        self._on_request = on_request
        self._on_oneway = on_oneway
        self._on_request_nowait = on_request_nowait
        self._max_frame = max_frame
        self._counters = counters
        self._max_inflight = max_inflight
        self._limiter = trio.Semaphore(max_inflight)
        self._outbox = Outbox(
            conn,
            counters,
            max_frames=max_inflight * 4,
            max_bytes=max_outbound_bytes,
            pack=self._pack,
        )
        self._idle = IdleTimer(idle_timeout)
        self.subscriptions = 0
        self._waiting = _WaitingList(conn.remote_address, counters)
        # Small replica requests wait here for the writer (each holds a place in the outbox).
        self._batcher = ReplicaBatcher() if batch_requests else None
        self.closed = False
        self._closed_event = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read frames until the connection ends; dispatch requests and responses."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, nursery.cancel_scope)
                if self._idle.timeout != math.inf:
                    nursery.start_soon(self._idle_loop, nursery.cancel_scope)
                task_status.started()
                del task_status  # it holds the starting task for as long as the channel lives
                await self._read_loop(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self._mark_closed()
            with trio.move_on_after(1.0, shield=True):
                await self.conn.aclose()

    @property
    def waiting(self) -> int:
        """Requests on this channel that wait for their replies, sent or still queued for a
        batch (a batch frame counts as one, beside its ops)."""
        return len(self._waiting.pending)

    @property
    def queued_bytes(self) -> int:
        """Bytes queued for sending: frames waiting and the batch being written."""
        return self._outbox.queued_bytes

    def _busy(self) -> bool:
        return bool(
            self._waiting.pending
            or self._limiter.value < self._max_inflight
            or self.subscriptions
            or self._outbox.unsent
        )

    async def _idle_loop(self, scope: trio.CancelScope) -> None:
        """Close the channel once it has been idle for ``idle_timeout`` (see the class)."""
        await self._idle.wait(self._busy)
        self._counters.refusals["idle_timeout"] += 1
        log.info(
            "closing connection to %s: idle for %g s", self.conn.remote_address, self._idle.timeout
        )
        self._mark_closed()
        scope.cancel()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        remote = self.conn.remote_address
        while True:
            try:
                payload = await self.conn.receive()
                self._counters.frames_in += 1
                self._counters.bytes_in += len(payload)
                env = _codec.decode(payload, max_frame=self._max_frame)
            except ConnectionClosed:
                return
            except DecodeError as exc:
                self._counters.count_decode_error(exc)
                log.warning("closing connection to %s: %s", remote, exc)
                return
            del payload  # decoded: do not hold the frame while waiting below
            self._idle.touch()
            go_on = await self._dispatch(env, nursery)
            # Hold nothing of this frame while waiting for the next: an idle channel would keep
            # its last message alive (a 60 KiB delta; N² of them in a simulated cluster).
            del env
            if not go_on:
                return

    async def _dispatch(self, env: Envelope, nursery: trio.Nursery) -> bool:
        """Handle one received frame; ``False`` ends the channel."""
        remote = self.conn.remote_address
        kind, message = env.kind, env.message
        if self._refuse is not None and kind is not Kind.RESPONSE and kind is not Kind.ERROR:
            if await self._refused(kind, env.request_id, message):
                return False
        if kind is Kind.REQUEST:
            if self._outbox.full():
                # The other side does not read its replies: take nothing more from it until
                # they drain (TCP pushes back on it meanwhile; a write that stalls for the
                # transport's frame_timeout ends the connection).
                try:
                    await self._outbox.wait_room()
                except ConnectionClosed:
                    return False
            # Every request holds a slot until answered: at most max_inflight at once.
            try:
                self._limiter.acquire_nowait()
            except trio.WouldBlock:
                await self._limiter.acquire()
            if self._on_request_nowait is not None:
                responder = _Responder(self, env.request_id, message)
                try:
                    reply = self._on_request_nowait(self, message, responder)
                except Exception as exc:
                    responder(exc)
                    reply = DEFERRED
                if isinstance(reply, Message):
                    responder(reply)
                if reply is not None:
                    return True
            nursery.start_soon(self._answer, env.request_id, message)
        elif kind is Kind.RESPONSE or kind is Kind.ERROR:
            waiter = self._waiting.pending.pop(env.request_id, None)
            if waiter is None:
                self._counters.dropped["unexpected_response"] += 1
                return True
            if waiter.batch is not None:
                assert self._batcher is not None
                try:
                    answers = self._batcher.answers(waiter.batch, kind, message)
                except DecodeError as exc:
                    self._counters.count_decode_error(exc)
                    log.warning("closing connection to %s: %s", remote, exc)
                    return False
                self._waiting.unbatch(answers, self._enqueue_request)
                return True
            waiter.kind, waiter.message = kind, message
            self._waiting.wake(waiter)
        else:
            try:
                await self._on_oneway(self, message)
            except Exception as exc:
                # A peer must never crash because of what it received.
                self._counters.dropped["handler_error"] += 1
                log.warning("one-way %s from %s failed: %r", message.TAG, remote, exc)
        return True

    async def _refused(self, kind: Kind, request_id: int, message: Message) -> bool:
        """Whether this side of the connection may not send ``message`` (a client speaking for
        a member): then it is answered once, counted, and the reader ends the connection."""
        assert self._refuse is not None
        reason = self._refuse(message)
        if reason is None:
            return False
        self._counters.refused_message(reason)
        log.warning(
            "closing connection to %s: %s sent %s", self.conn.remote_address, reason, message.TAG
        )
        if kind is Kind.REQUEST:
            self._enqueue_reply(Kind.ERROR, request_id, _forbidden(reason, message))
            with trio.move_on_after(1.0):
                await self.flush()
        return True

    def _respond(self, request_id: int, message: Message, reply: Message | BaseException) -> None:
        """Queue the answer to a request the reader took (releases its slot); never raises."""
        self._limiter.release()
        if self.closed:
            return
        if isinstance(reply, Message):
            self._enqueue_reply(Kind.RESPONSE, request_id, reply)
        elif isinstance(reply, Exception):
            error = reply_for_exception(message, reply, self.conn.remote_address)
            self._enqueue_reply(Kind.ERROR, request_id, error)
        else:
            error = ErrorReply("internal", f"internal error: {reply!r}")
            self._enqueue_reply(Kind.ERROR, request_id, error)

    async def _answer(self, request_id: int, message: Message) -> None:
        try:
            try:
                reply: Message = await self._on_request(self, message)
                kind = Kind.RESPONSE
            except Exception as exc:
                reply = reply_for_exception(message, exc, self.conn.remote_address)
                kind = Kind.ERROR
            await self._outbox.wait_room()
            self._enqueue_reply(kind, request_id, reply)
        except ConnectionClosed:
            pass
        finally:
            self._limiter.release()

    def _enqueue_reply(self, kind: Kind, request_id: int, reply: Message) -> None:
        try:
            payload = _codec.encode(kind, request_id, reply)
        except DecodeError as exc:
            # Never leave the requester waiting because its answer could not be encoded.
            log.error("cannot encode reply %s: %s", reply.TAG, exc)
            payload = _codec.encode(Kind.ERROR, request_id, ErrorReply("internal", str(exc)))
        if not self.closed:
            self._outbox.put(payload)

    async def _write_loop(self, scope: trio.CancelScope) -> None:
        await self._outbox.run()
        # The connection cannot carry anything more: end the channel.
        self._mark_closed()
        scope.cancel()

    def _pack(self) -> None:
        """The writer is free: the pending small replica requests go out as batch frames (a
        request alone as itself); cancelled ones are not sent."""
        assert self._batcher is not None
        taken, groups = self._batcher.take(self._waiting.pending)
        self._outbox.unreserve(taken)
        for group in groups:
            if self.closed:
                return  # a callback closed it meanwhile: _mark_closed failed the waiters
            if len(group) == 1:
                self._enqueue_request(*group[0])
                continue
            batch_id = self._waiting.next_id()
            try:
                batch = ReplicaBatch(tuple(message for _, message in group))
                payload = _codec.encode(Kind.REQUEST, batch_id, batch)
            except DecodeError:
                for request_id, message in group:  # each alone: only the one at fault fails
                    self._enqueue_request(request_id, message)
                continue
            self._waiting.pending[batch_id] = _Waiter(batch=group)
            self._batcher.sent(batch_id, group)
            self._outbox.put(payload)

    def _enqueue_request(self, request_id: int, message: Message) -> None:
        """Queue a request whose waiter is registered already; one that cannot be encoded
        fails its waiter instead."""
        try:
            payload = _codec.encode(Kind.REQUEST, request_id, message)
        except DecodeError as exc:
            waiter = self._waiting.pending.pop(request_id, None)
            if waiter is not None and waiter.callback is not None:
                self._waiting.tell(waiter.callback, exc)
            return
        if not self.closed:
            self._outbox.put(payload)

    async def request(self, message: Message) -> Message:
        """Send a request and wait for its response.

        Raises:
          RemoteError: the other side answered with an error.
          ConnectionClosed: the channel closed before the response came.
        """
        await self._outbox.wait_room()
        event = trio.Event()
        waiter = _Waiter(event)
        request_id = self._register(message, waiter)
        try:
            await event.wait()
        finally:
            self._waiting.pending.pop(request_id, None)
        result = _outcome(waiter, self.conn.remote_address)
        if isinstance(result, BaseException):
            raise result
        return result

    def request_nowait(self, message: Message, callback: ReplyCallback) -> int:
        """Send a request without waiting; ``callback`` gets the reply or the exception.

        The callback runs in the channel's reader (it must not block) with the response, a
        :class:`RemoteError` for an error reply, or :class:`ConnectionClosed`. It is called at most
        once, and never after :meth:`cancel`. Returns the request id.

        A small ``ReplicaGet`` or ``ReplicaPut`` is not encoded here: it waits for the writer
        with the others pending for this channel, and they go out together (see
        ``batch_requests``); its callback gets a ``ReplicaState`` (or the error its op met) as if
        it had travelled alone.

        Raises:
          ConnectionClosed: the channel is already closed (the callback is not called).
          trio.WouldBlock: the send queue is full, by frames or bytes (a peer that does not drain
            it); nothing was queued, use :meth:`request`, which waits for room.
        """
        if self._outbox.full():
            raise trio.WouldBlock
        if self._batcher is not None and isinstance(message, (ReplicaGet, ReplicaPut)):
            bound = size_bound(message)
            if bound <= BATCH_OP_BYTES:
                if self.closed:
                    raise ConnectionClosed(f"connection to {self.conn.remote_address} is closed")
                request_id = self._waiting.next_id()
                self._waiting.pending[request_id] = _Waiter(callback=callback)
                self._batcher.add(request_id, message, bound)
                self._outbox.reserve()
                return request_id
        return self._register(message, _Waiter(callback=callback))

    def cancel(self, request_id: int) -> None:
        """Forget a request started with :meth:`request_nowait` (a late reply is dropped); a
        batch whose ops are all forgotten is forgotten too."""
        batch_id = self._batcher.forget(request_id) if self._batcher is not None else None
        self._waiting.cancel(request_id, batch_id)

    def _register(self, message: Message, waiter: _Waiter) -> int:
        if self.closed:
            raise ConnectionClosed(f"connection to {self.conn.remote_address} is closed")
        request_id = self._waiting.next_id()
        payload = _codec.encode(Kind.REQUEST, request_id, message)
        self._waiting.pending[request_id] = waiter
        self._outbox.put(payload)
        return request_id

    async def notify(self, message: Message) -> None:
        """Send a one-way message."""
        await self._outbox.wait_room()
        self._outbox.put(_codec.encode(Kind.ONEWAY, 0, message))

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (or the channel closed)."""
        await self._outbox.flush()

    def _mark_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Frames that will never be written no longer count against the node.
        self._outbox.close()
        if self._batcher is not None:
            self._batcher.clear()
        self._waiting.close()
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
