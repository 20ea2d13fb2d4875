"""A client of a gossipkv cluster: connects to any listed peer and fails over to the next.

Operator requests (``members``, ``leave``, ``set_metadata``) go to one peer, the one the caller
names first when it is reachable. Only requests that are safe to repeat are retried elsewhere.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import trio

from ._errors import (
    ConfigError,
    ConnectionClosed,
    DecodeError,
    GossipKVError,
    HandshakeError,
    NodeClosedError,
    RemoteError,
    TransportError,
    ValueNotEncodable,
    error_from_code,
    single_error,
)
from ._kv import Change, GetResult, PutResult, check_request
from ._limits import NetworkLimits
from ._messages import (
    PROTOCOL_VERSION,
    ConfigRequest,
    Hello,
    KeysRequest,
    KvGet,
    KvPut,
    KvResult,
    LeaveRequest,
    LogLevelRequest,
    MembersRequest,
    Message,
    MonitorEvent,
    MonitorRequest,
    OwnersRequest,
    PingRequest,
    ReloadTlsRequest,
    RemoveRequest,
    RepairRequest,
    Reply,
    RestoreRequest,
    RingRequest,
    SetMetadataRequest,
    SnapshotRequest,
    StatsRequest,
    WatchEvent,
    WatchRequest,
)
from ._peer import Channel, OnewayHandler, TransportCounters, handshake, verify_certificate
from ._replication import check_count
from ._statistics import NodeStatistics, statistics_from_body
from ._types import Address
from .membership._gossiper import MemberView
from .storage._base import MAX_VALUE_DEPTH, check_plain
from .transport._base import Transport
from .transport._tls import TLSConfig


class _Pending:
    """A request waiting for its reply (or for its deadline)."""

    __slots__ = ("channel", "deadline", "done", "event", "reply", "request_id")

    def __init__(self, deadline: float, channel: Channel) -> None:
        self.deadline = deadline
        self.channel = channel
        self.request_id = 0
        self.event = trio.Event()
        self.done = False
        #: The answer, until the waiting caller takes it: the expiry queue keeps a finished
        #: request until its deadline comes round, and must not keep its reply that long (a
        #: scan of large pages held every page of the last ``request_timeout``).
        self.reply: Message | BaseException | None = None

    def finish(self, reply: Message | BaseException) -> None:
        if not self.done:
            self.done = True
            self.reply = reply
            self.event.set()

    def take(self) -> Message | BaseException:
        reply, self.reply = self.reply, None
        assert reply is not None
        return reply


class Client:
    """Talks to a cluster through one peer at a time. Create it with :func:`open_client`.

    Many requests may be in flight at once on the one connection. When a request finds the
    connected peer gone (or silent for ``request_timeout``), the client moves to the next listed
    peer; requests that are safe to repeat (reads, members, statistics, and puts, which carry an
    idempotency id) are retried there (at least once, even with one peer listed), operator
    requests are not. A connection the peer closed while it was idle (its
    ``NetworkLimits.idle_timeout``) is simply reopened by the next request, of any kind.

    Attributes:
      connected_to: the address of the peer in use, or ``None`` before the first request.
      watch_dropped: changes a slow :meth:`watch` reader lost (its buffer was full).
    """

    def __init__(
        self,
        peers: Sequence[str],
        *,
        cluster: str,
        transport: Transport,
        connect_timeout: float,
        request_timeout: float,
        nursery: trio.Nursery,
    ) -> None:
        self._peers = list(peers)
        self._cluster = cluster
        self._transport = transport
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._nursery = nursery
        self._channel: Channel | None = None
        self._counters = TransportCounters()
        self._tls = getattr(transport, "tls", None) is not None
        self._lock = trio.Lock()
        self._pending: deque[_Pending] = deque()
        self._expiry_lot = trio.lowlevel.ParkingLot()
        nursery.start_soon(self._expire_loop)
        self._closed = False
        self.connected_to: str | None = None
        self._client_id = secrets.token_hex(8)
        self._seq = 0
        #: Changes a slow :meth:`watch` reader lost (its buffer was full: the newest are dropped).
        self.watch_dropped = 0

    async def _connect(self) -> Channel:
        if self._closed:
            raise NodeClosedError("client is closed")
        if self._channel is not None and not self._channel.closed:
            return self._channel
        errors: list[str] = []
        for addr in self._peers:
            try:
                channel = await self._dial(addr, _ignore, self._nursery)
            except HandshakeError:
                raise
            except (TransportError, DecodeError, trio.TooSlowError) as exc:
                errors.append(f"{addr}: {exc or 'no answer'}")
                continue
            self._channel = channel
            self.connected_to = addr
            return channel
        raise TransportError("no peer reachable: " + "; ".join(errors))

    async def _request(self, message: Message, *, retry: bool) -> dict[str, object]:
        reply = await self._call(message, retry=retry)
        if not isinstance(reply, Reply):
            raise DecodeError("bad_shape", f"unexpected reply {reply.TAG}")
        return reply.body

    async def _call(self, message: Message, *, retry: bool) -> Message:
        # Many requests may be in flight on the one connection; only connecting is serialized.
        # A request safe to repeat gets one attempt per listed peer, and at least two: a peer
        # closes connections that stay idle (NetworkLimits.idle_timeout), and a request that
        # met such a close must work on a fresh connection even with a single peer listed.
        attempts = max(2, len(self._peers)) if retry else 1
        last: GossipKVError | None = None
        unsent = 0
        while attempts > 0:
            channel = self._channel
            if channel is None or channel.closed or self._closed:
                async with self._lock:
                    channel = await self._connect()
            peer = self.connected_to
            try:
                reply = await self._request_once(channel, message)
            except _NotSent:
                # The connection had closed before the request went out (an idle connection
                # the peer closed): nothing was sent, so any request may go again.
                await self._drop(channel, peer, rotate=False)
                unsent += 1
                if unsent > len(self._peers) + 1:
                    raise TransportError(f"{peer}: connection closed") from None
                continue
            except (ConnectionClosed, trio.TooSlowError) as exc:
                last = TransportError(f"{peer}: {exc or 'request timed out'}")
                await self._drop(channel, peer, rotate=True)
                attempts -= 1
                continue
            except RemoteError as exc:
                error = error_from_code(exc.code, str(exc))
                if not (retry and exc.code in _TRY_ELSEWHERE):
                    raise error from exc
                # This peer cannot see enough replicas (cut off, or its owners are down): another
                # one may. Safe to repeat: reads, and puts (they carry an idempotency id).
                last = error
                await self._drop(channel, peer, rotate=True)
                attempts -= 1
                if attempts <= 0 or len(self._peers) < 2:
                    raise error from exc
                continue
            return reply
        assert last is not None
        raise last

    async def _drop(self, channel: Channel, peer: str | None, *, rotate: bool) -> None:
        """Close the connection to ``peer``; with ``rotate`` try the next listed peer first."""
        async with self._lock:
            if self._channel is channel:
                await channel.aclose()
                self._channel = None
                # Try the next peer first next time.
                if rotate and peer in self._peers:
                    self._peers.remove(peer)
                    self._peers.append(peer)

    async def _request_once(self, channel: Channel, message: Message) -> Message:
        """One request with the request timeout, timed by the client's expiry task (a cancel
        scope per request costs more than the request itself).

        Raises:
          _NotSent: the connection was already closed; nothing was sent.
          ConnectionClosed, trio.TooSlowError, RemoteError.
        """
        pending = _Pending(trio.current_time() + self._request_timeout, channel)
        try:
            pending.request_id = channel.request_nowait(message, pending.finish)
        except ConnectionClosed as exc:
            raise _NotSent from exc
        except trio.WouldBlock:
            with trio.fail_after(self._request_timeout):
                return await channel.request(message)
        self._pending.append(pending)
        if len(self._pending) == 1:
            self._expiry_lot.unpark()
        try:
            await pending.event.wait()
        finally:
            if not pending.done:  # cancelled while waiting
                channel.cancel(pending.request_id)
        reply = pending.take()
        # Finished requests at the head leave the expiry queue now, not at their deadline.
        queue = self._pending
        while queue and queue[0].done:
            queue.popleft()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def _expire_loop(self) -> None:
        """Fail requests that got no answer within the request timeout (oldest first)."""
        slack = self._request_timeout / 16
        while True:
            if not self._pending:
                await self._expiry_lot.park()
                continue
            head = self._pending[0]
            if not head.done:
                await trio.sleep_until(head.deadline + slack)
            now = trio.current_time()
            while self._pending and (self._pending[0].done or self._pending[0].deadline <= now):
                late = self._pending.popleft()
                if not late.done:
                    late.channel.cancel(late.request_id)
                    late.finish(trio.TooSlowError())

    async def members(self) -> list[MemberView]:
        """The membership table of the peer we are connected to, as :meth:`gossipkv.Node.members`.

        Returns:
          One :class:`MemberView` per member that peer knows of, sorted by name: the row with
          ``is_self`` is the peer itself, the one with ``is_leader`` the leader it sees.

        Raises:
          TransportError: no listed peer answered.
          HandshakeError: the peer is in another cluster or speaks another protocol version.
          DecodeError: the peer's answer is not a membership table.
          NodeClosedError: the client is closed.
        """
        return _member_views(await self._request(MembersRequest(), retry=True))

    async def get(self, key: str, *, r: int = 0, local: bool = False) -> GetResult:
        """Read ``key`` through the connected peer (retried on another peer if it fails).

        Args:
          key: a non-empty string of at most 1024 UTF-8 bytes.
          r: replies to wait for (default ``0``: the peer's ``KVConfig.r``); 1..N.
          local: read only the connected peer's own replica (not retried elsewhere).

        Returns:
          A :class:`GetResult`, as :meth:`gossipkv.Node.get`.

        Raises:
          ClusterNotReady: the cluster has no partition table yet (safe to retry).
          QuorumNotReached: fewer than R replicas answered.
          InvalidKey: ``key`` is not a non-empty string (:exc:`KeyTooLarge`: too long).
          StorageError: the peer's storage failed.
          InvalidArgument: ``r`` is not between 1 and N (as :meth:`gossipkv.Node.get`).
          TransportError: no listed peer answered.
          HandshakeError: the peer is in another cluster or speaks another protocol version.
          NodeClosedError: the client is closed.
        """
        check_request(key)
        check_count(r, "r")
        reply = _kv_result(await self._call(KvGet(key, r, local), retry=not local))
        return GetResult(reply.key, reply.found, list(reply.values), reply.context, reply.more)

    async def put(
        self, key: str, value: object, *, context: bytes | None = None, w: int = 0
    ) -> PutResult:
        """Write ``value`` (see :meth:`gossipkv.Node.put`).

        Each put carries this client's id and a sequence number, so a retry after a lost
        connection returns the first result instead of writing a second sibling.

        Args:
          key: a non-empty string of at most 1024 UTF-8 bytes.
          value: any CBOR-encodable value of at most 1 MiB encoded.
          context: the ``context`` of an earlier read or write of ``key``.
          w: replicas that must store it (default ``0``: the peer's ``KVConfig.w``); 1..N.

        Returns:
          A :class:`PutResult`, as :meth:`gossipkv.Node.put`.

        Raises:
          QuorumNotReached: fewer than W replicas stored it (it may still be stored on some).
          ClusterNotReady, Unavailable, TooManySiblings, ValueTooLarge, ValueTooDeep,
          RecordTooLarge, InvalidContext, InvalidKey, StorageError: as
            :meth:`gossipkv.Node.put`, reported by the peer.
          ValueNotEncodable: ``value`` is not plain CBOR data (checked before sending).
          InvalidArgument: ``w`` is not between 1 and N (as :meth:`gossipkv.Node.put`).
          TransportError: no listed peer answered.
          HandshakeError: the peer is in another cluster or speaks another protocol version.
          NodeClosedError: the client is closed.
        """
        # What no peer could accept is refused here, with the error a peer would give.
        check_request(key, context)
        check_count(w, "w")
        check_plain(value, MAX_VALUE_DEPTH)
        self._seq += 1
        msg = KvPut(key, value, context, w, self._client_id, self._seq)
        try:
            reply = _kv_result(await self._call(msg, retry=True))
        except DecodeError as exc:
            if exc.reason != "too_complex":
                raise
            # The frame would be refused by the peer: the value is what makes it so.
            raise ValueNotEncodable(f"value is too complex: {exc}") from None
        return PutResult(reply.key, list(reply.values), reply.context, reply.more)

    async def delete(self, key: str, *, context: bytes | None = None, w: int = 0) -> PutResult:
        """Delete ``key`` with a tombstone (see :meth:`gossipkv.Node.delete`).

        Args:
          key: the key to delete.
          context: the ``context`` of an earlier read, so the tombstone replaces what it saw.
          w: replicas that must store the tombstone (default ``0``: the peer's ``KVConfig.w``).

        Returns:
          A :class:`PutResult` with the live siblings still stored and the new context.

        Raises:
          QuorumNotReached, ClusterNotReady, Unavailable, InvalidContext, InvalidKey,
          StorageError, RemoteError, TransportError, HandshakeError, NodeClosedError: see
            :meth:`put`.
        """
        check_request(key, context)
        check_count(w, "w")
        self._seq += 1
        msg = KvPut(key, None, context, w, self._client_id, self._seq, delete=True)
        reply = _kv_result(await self._call(msg, retry=True))
        return PutResult(reply.key, list(reply.values), reply.context, reply.more)

    async def statistics(self) -> NodeStatistics:
        """The statistics snapshot of the connected peer, as :meth:`gossipkv.Node.statistics`.

        Returns:
          A :class:`NodeStatistics` (fields a peer of an older version does not send take their
          defaults).

        Raises:
          DecodeError: the peer's answer is not a statistics snapshot.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return statistics_from_body(await self._request(StatsRequest(), retry=True))

    async def leave(
        self, *, handoff_seconds: float = 0.0, force: bool = False
    ) -> dict[str, object]:
        """Ask the connected peer to decommission itself (not retried elsewhere).

        The peer answers at once, then hands off its data and leaves as
        :meth:`gossipkv.Node.leave` does; its process (``gossipkv peer``) exits when the leave is
        done. Follow the hand-off in :meth:`statistics` (``leave``); it ends when the peer stops
        answering (done) or reports ``state == "failed"`` (it stays up).

        Args:
          handoff_seconds: how long the hand-off may take (0: the peer's default).
          force: leave when the time is up even if the hand-off is incomplete, or when no other
            member is in reach to hand the data to.

        Returns:
          ``{"ok": True, "status": "leaving"}`` (or the peer's status if it was already leaving
          or left).

        Raises:
          RemoteError: ``bad_request`` when no other member is in reach and ``force`` is off.
          TransportError: the connected peer did not answer.
          HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(LeaveRequest(handoff_seconds, force), retry=False)

    async def ring(self) -> dict[str, object]:
        """The connected peer's partition table (``gossipkv ring``).

        Returns:
          ``{"epoch", "partitions", "replicas", "owners", "pulling", "under_replicated"}``:
          ``owners[p]`` is partition ``p``'s preference list; ``pulling`` maps a partition (as
          text) to the members still pulling it (moves pending).

        Raises:
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(RingRequest(), retry=True)

    async def owners(self, key: str) -> dict[str, object]:
        """Where ``key`` lives (``gossipkv owners``): its partition, its owners, and which of
        them hold a live value now (asked now).

        Args:
          key: the key.

        Returns:
          ``{"key", "partition", "epoch", "owners": [{"name", "reachable", "pulling", "holds",
          "siblings"} (and "error" when an owner did not answer)]}``.

        Raises:
          InvalidKey: a bad key (:exc:`KeyTooLarge`: too long).
          ClusterNotReady: no table yet.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(OwnersRequest(key), retry=True)

    async def repair(self, partition: int) -> dict[str, object]:
        """Run anti-entropy of ``partition`` on the connected peer against every other
        reachable owner, now, until they agree (``gossipkv repair``). Not retried elsewhere.

        Args:
          partition: a partition the connected peer owns.

        Returns:
          ``{"partition", "compared", "keys_repaired", "unreachable"}``.

        Raises:
          RemoteError: ``bad_request`` for a partition out of range or not owned there.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(RepairRequest(partition), retry=False)

    async def snapshot(self, tag: str = "") -> dict[str, object]:
        """Have the connected peer hard-link a consistent copy of its log engine under its data
        dir (see :meth:`gossipkv.Node.snapshot`). Not retried on another peer.

        Args:
          tag: the snapshot's name; the current UTC time when empty.

        Returns:
          ``{"tag", "path", "files", "bytes", "keys"}``.

        Raises:
          InvalidArgument: a bad or taken tag, or a peer without a data dir.
          RemoteError: the copy failed on the peer (``storage``), or an operator certificate
            is needed (TLS).
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(SnapshotRequest(tag), retry=False)

    async def remove(self, name: str) -> dict[str, object]:
        """Have the cluster remove member ``name``, declared dead (see
        :meth:`gossipkv.Node.remove`). Not retried on another peer.

        Args:
          name: the member to remove.

        Returns:
          ``{"removed", "generation", "leader", "minority"}``.

        Raises:
          RemoteError: refused (``bad_request``: unknown member, or reachable and up;
            ``unavailable``: no leader in reach).
          TransportError: the peer could not be reached.
          NodeClosedError: the client is closed.
        """
        return await self._request(RemoveRequest(name), retry=False)

    async def reload_tls(self) -> None:
        """Have the connected peer read its TLS certificate, key and CA bundle again (not
        retried elsewhere); needs an ``operator`` certificate.

        Raises:
          RemoteError: ``bad_request`` (the peer runs without TLS, or its files do not load;
            the ones in use stay in force) or ``forbidden`` (not an operator certificate).
          TransportError: the connected peer did not answer.
        """
        await self._request(ReloadTlsRequest(), retry=False)

    async def set_metadata(self, key: str, value: str | None) -> None:
        """Set a metadata key on the connected peer (not retried elsewhere).

        Args:
          key: 1..128 characters.
          value: a string (at most 512 UTF-8 bytes by default), or ``None`` to delete the key.

        Raises:
          InvalidArgument: the peer refused the key or value (as
            :meth:`gossipkv.Node.set_metadata`).
          TransportError: the connected peer did not answer.
          HandshakeError, NodeClosedError: as :meth:`members`.
        """
        await self._request(SetMetadataRequest(key, value), retry=False)

    async def config(self) -> dict[str, object]:
        """The connected peer's effective configuration (``gossipkv config show``); needs an
        ``operator`` certificate under TLS.

        Returns:
          ``{"node", "gossip", "kv", "limits", "storage_limits"}`` (see
          :meth:`Node.effective_config`).

        Raises:
          RemoteError: ``forbidden`` (not an operator certificate).
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(ConfigRequest(), retry=True)

    async def set_log_level(self, level: str) -> dict[str, object]:
        """Set the connected peer's ``gossipkv`` log level now (not retried elsewhere); needs an
        ``operator`` certificate under TLS.

        Args:
          level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.

        Returns:
          ``{"previous", "level"}``.

        Raises:
          RemoteError: ``bad_request`` for an unknown level; ``forbidden`` as above.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(LogLevelRequest(level), retry=False)

    async def ping(self) -> dict[str, object]:
        """Have the connected peer time a round trip to every member it knows.

        Returns:
          ``{"self", "members": [{"name", "address", "status", "reachable", "phi", "rtt_ms",
          "error"}, ...]}``: ``rtt_ms`` is ``None`` (and ``error`` says why) for a member that
          did not answer within the peer's request timeout.

        Raises:
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(PingRequest(), retry=True)

    async def keys_page(
        self,
        partition: int,
        *,
        after: str = "",
        limit: int = 1000,
        prefix: str = "",
        clocks: bool = False,
    ) -> dict[str, object]:
        """One page of the live keys the connected peer's replica holds in ``partition``.

        Args:
          partition: a partition this peer owns (others are simply empty here).
          after: the ``next`` of the previous page (``""``: from the start).
          limit: at most this many keys (1..1000).
          prefix: only keys starting with it.
          clocks: also each key's whole clock (opaque bytes for :meth:`restore`); such a page
            stops early at 4 MiB of clocks.

        Returns:
          ``{"partition", "keys", "next"}`` (and ``"clocks"``); ``next`` is ``None`` after the
          last page.

        Raises:
          RemoteError: ``bad_request`` (a partition out of range, a bad limit) or ``not_ready``
            (no partition table yet).
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(KeysRequest(partition, after, limit, prefix, clocks), retry=True)

    async def restore(self, key: str, clock: bytes) -> dict[str, object]:
        """Merge a clock saved by :meth:`keys_page` (``clocks=True``) into every owner of
        ``key``, as read repair does: siblings stay siblings and nothing newer is overwritten.
        Needs an ``operator`` certificate under TLS. Retrying is safe (a merge is idempotent).

        Args:
          key: the key.
          clock: its clock as saved.

        Returns:
          ``{"key", "acks", "owners"}``.

        Raises:
          RemoteError: ``invalid_clock`` or ``forbidden``.
          Unavailable, ClusterNotReady: no owner stored it.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._request(RestoreRequest(key, clock), retry=True)

    @asynccontextmanager
    async def monitor(
        self, level: str = "info", max_buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, str, str]]]:
        """Follow the connected peer's log records at ``level`` and up, and its membership
        events; needs an ``operator`` certificate under TLS.

        Args:
          level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``; records below
            the peer's own level are not produced at all (raise it with :meth:`set_log_level`).
          max_buffer: items held for a slow reader.

        Yields:
          A receive channel of ``(kind, level, line)``: ``kind`` is ``log`` or ``event``. It
          ends when the peer closes the connection. A reader that falls ``max_buffer`` items
          behind loses the newest (the peer bounds its own buffer the same way).

        Raises:
          RemoteError: ``bad_request`` (unknown level), ``too_many_watches`` or ``forbidden``.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        if self._closed:
            raise NodeClosedError("client is closed")
        if self.connected_to is None:
            await self.members()  # connects (and fails over) like every request
        addr = self.connected_to
        assert addr is not None
        send, receive = trio.open_memory_channel[tuple[str, str, str]](max_buffer)

        async def on_event(channel: Channel, message: Message) -> None:
            if isinstance(message, MonitorEvent):
                try:
                    send.send_nowait((message.kind, message.level, message.line))
                except trio.WouldBlock:
                    self.watch_dropped += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

        try:
            async with trio.open_nursery() as nursery:
                try:
                    channel = await self._dial(addr, on_event, nursery)
                except trio.TooSlowError:
                    raise TransportError(f"{addr}: no answer") from None
                try:
                    with trio.fail_after(self._request_timeout):
                        await channel.request(MonitorRequest(level))
                except trio.TooSlowError:
                    await channel.aclose()
                    raise TransportError(f"{addr}: the monitor request timed out") from None
                except RemoteError as exc:
                    await channel.aclose()
                    raise error_from_code(exc.code, str(exc)) from None

                async with _stream(nursery, [channel], send, receive):
                    yield receive
        except BaseExceptionGroup as group:
            error = single_error(group)
            if error is None:
                raise
            raise error from group

    @asynccontextmanager
    async def watch(
        self, prefix: str = "", max_buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Change]]:
        """Subscribe to changes of keys starting with ``prefix`` anywhere in the cluster.

        Opens one connection per member listed by :meth:`members` (a watch at every replica),
        merges their streams and drops duplicates: a change stored by several replicas (the same
        key and context) is delivered once. Members that are unreachable when the watch starts,
        or that join later, are not watched. The channel ends when every watched member's
        connection has closed.

        A reader that falls ``max_buffer`` changes behind loses the newest ones (counted in
        :attr:`watch_dropped`); each peer also bounds its per-connection buffer the same way.

        Args:
          prefix: only keys starting with it (``""``: every key).
          max_buffer: changes held for a slow reader.

        Yields:
          A receive channel of :class:`Change`.

        Raises:
          RemoteError: every member refused the watch (``code == "too_many_watches"``: each
            peer serves at most ``NetworkLimits.max_watches`` watches).
          TransportError: no member could be watched.
          HandshakeError: the peer asked for the member list is in another cluster or speaks
            another protocol version.
          DecodeError: that peer's member list is malformed.
          NodeClosedError: the client is closed.
        """
        if self._closed:
            raise NodeClosedError("client is closed")
        addrs: list[str] = []
        for row in await self.members():
            if row.status not in ("left", "removed") and row.address and row.address not in addrs:
                addrs.append(row.address)
        if not addrs and self.connected_to is not None:
            addrs.append(self.connected_to)
        send, receive = trio.open_memory_channel[Change](max_buffer)
        # Contexts only grow, so (key, context) names one stored state; remember the recent ones.
        seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()

        async def on_event(channel: Channel, message: Message) -> None:
            if not isinstance(message, WatchEvent):
                return
            ident = (message.key, message.context)
            if ident in seen:
                seen.move_to_end(ident)
                return
            seen[ident] = None
            if len(seen) > _WATCH_SEEN:
                seen.popitem(last=False)
            try:
                send.send_nowait(
                    Change(message.key, list(message.values), message.context, message.more)
                )
            except trio.WouldBlock:
                self.watch_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        channels: list[Channel] = []
        errors: list[str] = []
        refused: list[RemoteError] = []
        try:
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    try:
                        channel = await self._dial(addr, on_event, nursery)
                    except (TransportError, DecodeError, HandshakeError, trio.TooSlowError) as exc:
                        errors.append(f"{addr}: {exc or 'no answer'}")
                        continue
                    try:
                        with trio.fail_after(self._request_timeout):
                            await channel.request(WatchRequest(prefix))
                    except (ConnectionClosed, RemoteError, trio.TooSlowError) as exc:
                        errors.append(f"{addr}: {exc or 'watch request timed out'}")
                        if isinstance(exc, RemoteError):
                            refused.append(exc)
                        await channel.aclose()
                        continue
                    channels.append(channel)
                if not channels:
                    nursery.cancel_scope.cancel()
                else:
                    async with _stream(nursery, channels, send, receive):
                        yield receive
        except BaseExceptionGroup as group:
            error = single_error(group)
            if error is None:
                raise
            raise error from group
        if not channels:
            if refused and len(refused) == len(errors):
                # Every member answered, and refused (too_many_watches, say): say why.
                raise error_from_code(refused[0].code, str(refused[0]))
            raise TransportError("no member could be watched: " + "; ".join(errors))

    async def _dial(self, addr: str, on_oneway: OnewayHandler, nursery: trio.Nursery) -> Channel:
        """A new connection to ``addr`` (handshake done, running in ``nursery``).

        Raises:
          TransportError, HandshakeError, DecodeError, trio.TooSlowError.
        """
        with trio.move_on_after(self._connect_timeout) as scope:
            conn = await self._transport.connect(addr)
        if scope.cancelled_caught:
            raise TransportError("connect timed out")
        # Only small frames until the peer's hello has come (as a peer does).
        conn.max_frame = min(conn.max_frame, _HELLO_FRAME)
        try:
            with trio.fail_after(self._request_timeout):
                remote = await handshake(
                    conn,
                    Hello(PROTOCOL_VERSION, self._cluster, "client", 0, ""),
                    initiator=True,
                    max_frame=conn.max_frame,
                    counters=self._counters,
                    own_node_id=None,
                    # With TLS, the peer's certificate must be a member's and name it.
                    verify=partial(verify_certificate, conn, True) if self._tls else None,
                )
            conn.max_frame = self._transport.max_frame
        except BaseException:
            with trio.move_on_after(0.5, shield=True):
                await conn.aclose()
            raise
        channel = Channel(
            conn,
            remote,
            on_request=_refuse_requests,
            on_oneway=on_oneway,
            max_frame=self._transport.max_frame,
            counters=self._counters,
        )
        await nursery.start(channel.run)
        return channel

    async def aclose(self) -> None:
        """Close the connection; later requests raise :exc:`NodeClosedError`. Idempotent.

        :func:`open_client` calls it on exit.
        """
        self._closed = True
        if self._channel is not None:
            await self._channel.aclose()


_WATCH_SEEN = 10_000
_HELLO_FRAME = NetworkLimits().max_hello_frame


class _NotSent(Exception):
    """A request found its connection closed before anything was sent."""


#: Error codes after which a retry-safe request is tried on the next peer: the peer could not
#: reach enough replicas, which another peer (on the other side of a cut) may.
_TRY_ELSEWHERE = frozenset({"quorum", "unavailable", "not_ready"})


def _kv_result(reply: Message) -> KvResult:
    if not isinstance(reply, KvResult):
        raise DecodeError("bad_shape", f"unexpected reply {reply.TAG}")
    return reply


async def _refuse_requests(channel: Channel, message: Message) -> Message:
    raise RemoteError("unsupported", "clients do not serve requests")


async def _ignore(channel: Channel, message: Message) -> None:
    return


@asynccontextmanager
async def open_client(
    peers: Sequence[str],
    *,
    cluster: str = "gossipkv",
    transport: Transport | None = None,
    connect_timeout: float = 2.0,
    request_timeout: float = 5.0,
    tls: TLSConfig | None = None,
) -> AsyncIterator[Client]:
    """Open a :class:`Client` of the cluster reachable through ``peers``.

    ``async with open_client(["127.0.0.1:7400"]) as client: await client.get("k")``

    The client connects on its first request, to the first address of ``peers`` that answers,
    and moves to the next one when that peer goes away.

    Args:
      peers: ``host:port`` addresses of members, tried in order.
      cluster: the cluster name; a peer of another cluster refuses the connection.
      transport: defaults to TCP; tests pass a ``gossipkv.testing.SimNetwork`` transport.
      connect_timeout: seconds one connection attempt may take.
      request_timeout: seconds one request may take before the client tries the next peer.
      tls: mutual TLS (:class:`TLSConfig`, e.g. ``TLSConfig.from_dir(d, "alice")``) for peers
        run with ``--tls-dir``; each peer's certificate must carry the ``peer`` role and the
        name it gives in its hello. A ``client`` certificate may read, write, watch and read
        statistics; leave, remove, repair and metadata need an ``operator`` one.

    Yields:
      The :class:`Client`; it is closed on exit.

    Raises:
      ConfigError: at call time, for an empty or malformed peer list.

    The requests themselves raise :exc:`HandshakeError` (another cluster or protocol version)
    and :exc:`TransportError` (no listed peer reachable); see :class:`Client`.
    """
    if isinstance(peers, str) or not peers:
        raise ConfigError("peers must be a non-empty list of 'host:port' strings")
    try:
        for p in peers:
            Address.parse(p)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if transport is None:
        from .transport._tcp import TcpTransport

        transport = TcpTransport(tls=tls)
    elif tls is not None:
        raise ConfigError("pass tls to the transport you give, not to open_client")
    try:
        async with trio.open_nursery() as nursery:
            client = Client(
                peers,
                cluster=cluster,
                transport=transport,
                connect_timeout=connect_timeout,
                request_timeout=request_timeout,
                nursery=nursery,
            )
            try:
                yield client
            finally:
                with trio.move_on_after(1.0, shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = single_error(group)
        if error is None:
            raise
        raise error from group


_Item = TypeVar("_Item")


@asynccontextmanager
async def _stream(
    nursery: trio.Nursery,
    channels: list[Channel],
    send: trio.MemorySendChannel[_Item],
    receive: trio.MemoryReceiveChannel[_Item],
) -> AsyncIterator[None]:
    """Hand ``receive`` to the caller's body while ``channels`` feed ``send``: the stream ends
    when every channel closed; leaving the body closes them and ends ``nursery``."""

    async def end_when_all_closed() -> None:
        for channel in channels:
            await channel.wait_closed()
        send.close()

    nursery.start_soon(end_when_all_closed)
    try:
        async with receive:
            yield
    finally:
        send.close()
        with trio.move_on_after(1.0, shield=True):
            for channel in channels:
                await channel.aclose()
        nursery.cancel_scope.cancel()


def _member_views(body: dict[str, object]) -> list[MemberView]:
    """The rows of a ``members`` reply (``{"self", "leader", "members": [...]}``), checked.

    Raises:
      DecodeError: ``bad_field``: not that shape, or a row with a field of the wrong type.
    """
    me, leader, rows = body.get("self"), body.get("leader"), body.get("members")
    if not isinstance(me, str) or not (leader is None or isinstance(leader, str)):
        raise DecodeError("bad_field", "members: self or leader is not a name")
    if not isinstance(rows, list):
        raise DecodeError("bad_field", "members: no list of members")
    out: list[MemberView] = []
    for row in rows:
        match row:
            case {
                "name": str(name),
                "address": str() | None as address,
                "status": str(status),
                "reachable": bool(reachable),
                "up_number": int() | None as up_number,
                "age_rank": int() | None as age_rank,
                "generation": int(generation),
                "heartbeat": int(heartbeat),
                "phi": float() | int() | None as phi,
                "metadata": dict(metadata),
            } if all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
                pass
            case _:
                raise DecodeError("bad_field", f"members: malformed row {row!r:.120}")
        if any(isinstance(v, bool) for v in (up_number, age_rank, generation, heartbeat, phi)):
            raise DecodeError("bad_field", f"members: malformed row {row!r:.120}")
        out.append(
            MemberView(
                name=name,
                address=address,
                status=status,
                reachable=reachable,
                up_number=up_number,
                age_rank=age_rank,
                generation=generation,
                heartbeat=heartbeat,
                phi=None if phi is None else float(phi),
                metadata=dict(metadata),
                is_leader=name == leader,
                is_self=name == me,
            )
        )
    return out
