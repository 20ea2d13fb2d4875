"""A client of a gossipkv cluster: connects to any listed peer and fails over to the next.

Operator requests (``members``, ``leave``, ``set_metadata``) go to one peer, the one the caller
names first when it is reachable. Only requests that are safe to repeat are retried elsewhere.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

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
    error_from_code,
    single_error,
)
from ._kv import Change, GetResult, PutResult
from ._messages import (
    PROTOCOL_VERSION,
    Hello,
    KvGet,
    KvPut,
    KvResult,
    LeaveRequest,
    MembersRequest,
    Message,
    Reply,
    SetMetadataRequest,
    StatsRequest,
    WatchEvent,
    WatchRequest,
)
from ._peer import Channel, OnewayHandler, TransportCounters, handshake
from ._types import Address
from .transport._base import Transport


class Client:
    """Talks to a cluster through one peer at a time. Create it with :func:`open_client`."""

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
        self._lock = trio.Lock()
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
        attempts = len(self._peers) if retry else 1
        last: GossipKVError | None = None
        for _ in range(attempts):
            channel = self._channel
            if channel is None or channel.closed or self._closed:
                async with self._lock:
                    channel = await self._connect()
            peer = self.connected_to
            try:
                with trio.fail_after(self._request_timeout):
                    reply = await channel.request(message)
            except (ConnectionClosed, trio.TooSlowError) as exc:
                last = TransportError(f"{peer}: {exc or 'request timed out'}")
                async with self._lock:
                    if self._channel is channel:
                        await channel.aclose()
                        self._channel = None
                        # Try the next peer first next time.
                        if peer in self._peers:
                            self._peers.remove(peer)
                            self._peers.append(peer)
                continue
            except RemoteError as exc:
                raise error_from_code(exc.code, str(exc)) from exc
            return reply
        assert last is not None
        raise last

    async def members(self) -> dict[str, object]:
        """The ``members --json`` document of the peer we are connected to."""
        return await self._request(MembersRequest(), retry=True)

    async def get(self, key: str, *, r: int = 0, local: bool = False) -> GetResult:
        """Read ``key`` through the connected peer (retried on another peer if it fails)."""
        reply = await self._call(KvGet(key, r, local), retry=not local)
        return GetResult(*_kv_fields(reply))

    async def put(
        self, key: str, value: object, *, context: bytes | None = None, w: int = 0
    ) -> PutResult:
        """Write ``value`` (see :meth:`gossipkv.Node.put`).

        Each put carries this client's id and a sequence number, so a retry after a lost
        connection returns the first result instead of writing a second sibling.
        """
        self._seq += 1
        msg = KvPut(key, value, context, w, self._client_id, self._seq)
        key_, _, values, ctx = _kv_fields(await self._call(msg, retry=True))
        return PutResult(key_, values, ctx)

    async def delete(self, key: str, *, context: bytes | None = None, w: int = 0) -> PutResult:
        """Delete ``key`` with a tombstone."""
        self._seq += 1
        msg = KvPut(key, None, context, w, self._client_id, self._seq, delete=True)
        key_, _, values, ctx = _kv_fields(await self._call(msg, retry=True))
        return PutResult(key_, values, ctx)

    async def statistics(self) -> dict[str, object]:
        """The statistics snapshot of the connected peer (the ``stats --json`` shape)."""
        return await self._request(StatsRequest(), retry=True)

    async def leave(self) -> dict[str, object]:
        """Ask the connected peer to leave the cluster gracefully (not retried elsewhere)."""
        return await self._request(LeaveRequest(), retry=False)

    async def set_metadata(self, key: str, value: str | None) -> None:
        """Set a metadata key on the connected peer (not retried elsewhere)."""
        await self._request(SetMetadataRequest(key, value), retry=False)

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

        Raises:
          TransportError: no member could be watched.
        """
        if self._closed:
            raise NodeClosedError("client is closed")
        doc = await self.members()
        rows = doc.get("members")
        addrs: list[str] = []
        if isinstance(rows, list):
            for row in rows:
                if not isinstance(row, dict) or row.get("status") in ("left", "removed"):
                    continue
                addr = row.get("address")
                if isinstance(addr, str) and addr and addr not in addrs:
                    addrs.append(addr)
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
                send.send_nowait(Change(message.key, list(message.values), message.context))
            except trio.WouldBlock:
                self.watch_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        channels: list[Channel] = []
        errors: list[str] = []
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
                        await channel.aclose()
                        continue
                    channels.append(channel)
                if not channels:
                    nursery.cancel_scope.cancel()
                else:

                    async def end_when_all_closed() -> None:
                        for channel in channels:
                            await channel.wait_closed()
                        send.close()

                    nursery.start_soon(end_when_all_closed)
                    try:
                        async with receive:
                            yield receive
                    finally:
                        send.close()
                        with trio.move_on_after(1.0, shield=True):
                            for channel in channels:
                                await channel.aclose()
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            error = single_error(group)
            if error is None:
                raise
            raise error from group
        if not channels:
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
        try:
            with trio.fail_after(self._request_timeout):
                remote = await handshake(
                    conn,
                    Hello(PROTOCOL_VERSION, self._cluster, "client", 0, ""),
                    initiator=True,
                    max_frame=self._transport.max_frame,
                    counters=self._counters,
                    own_node_id=None,
                )
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
        self._closed = True
        if self._channel is not None:
            await self._channel.aclose()


_WATCH_SEEN = 10_000


def _kv_fields(reply: Message) -> tuple[str, bool, list[object], bytes]:
    if not isinstance(reply, KvResult):
        raise DecodeError("bad_shape", f"unexpected reply {reply.TAG}")
    return reply.key, reply.found, list(reply.values), reply.context


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
) -> AsyncIterator[Client]:
    """Connect to a cluster through the first reachable address of ``peers``.

    Raises:
      ConfigError: at call time, for an empty or malformed peer list.
      HandshakeError: the peer is in another cluster or speaks another protocol version.
      TransportError: when a request finds no reachable peer.
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

        transport = TcpTransport()
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
