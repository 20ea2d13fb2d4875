"""Streams through a client: :meth:`~gossipkv.Client.watch` (changes at every member, merged,
duplicates dropped) and :meth:`~gossipkv.Client.monitor` (one peer's log and events). Each
opens connections of its own, fed into one bounded channel: a slow reader loses the newest items
(counted), never slows a peer."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from .._errors import (
    ConnectionClosed,
    DecodeError,
    HandshakeError,
    InvalidArgument,
    NodeClosedError,
    RemoteError,
    TransportError,
    error_from_code,
    single_error,
)
from .._kv_model import Change
from .._messages import (
    MembersRequest,
    Message,
    MonitorEvent,
    MonitorRequest,
    WatchEvent,
    WatchRequest,
)
from .._peer import Channel
from ._connection import FailoverConnection
from ._replies import member_views

_WATCH_SEEN = 10_000


class StreamCalls:
    """:class:`~gossipkv.Client`'s watch and monitor (one of its bases).

    Attributes:
      watch_dropped: changes (and monitor lines) a slow reader lost.
    """

    _connection: FailoverConnection
    watch_dropped: int

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
        if self._connection.closed:
            raise NodeClosedError("client is closed")
        if self._connection.connected_to is None:
            # Connects (and fails over) like every request.
            member_views(await self._connection.request(MembersRequest(), retry=True))
        addr = self._connection.connected_to
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
                    channel = await self._connection.dial(addr, on_event, nursery)
                except trio.TooSlowError:
                    raise TransportError(f"{addr}: no answer") from None
                try:
                    with trio.fail_after(self._connection.request_timeout):
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
          InvalidArgument: ``prefix`` is not a string.
          RemoteError: every member refused the watch (``code == "too_many_watches"``: each
            peer serves at most ``NetworkLimits.max_watches`` watches).
          TransportError: no member could be watched.
          HandshakeError: the peer asked for the member list is in another cluster or speaks
            another protocol version.
          DecodeError: that peer's member list is malformed.
          NodeClosedError: the client is closed.
        """
        if self._connection.closed:
            raise NodeClosedError("client is closed")
        if not isinstance(prefix, str):  # every peer would close the connection instead
            raise InvalidArgument(f"a watch prefix must be a string, got {type(prefix).__name__}")
        addrs: list[str] = []
        rows = member_views(await self._connection.request(MembersRequest(), retry=True))
        for row in rows:
            if row.status not in ("left", "removed") and row.address and row.address not in addrs:
                addrs.append(row.address)
        if not addrs and self._connection.connected_to is not None:
            addrs.append(self._connection.connected_to)
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
                        channel = await self._connection.dial(addr, on_event, nursery)
                    except (TransportError, DecodeError, HandshakeError, trio.TooSlowError) as exc:
                        errors.append(f"{addr}: {exc or 'no answer'}")
                        continue
                    try:
                        with trio.fail_after(self._connection.request_timeout):
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
