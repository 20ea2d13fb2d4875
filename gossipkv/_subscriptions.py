"""Subscriptions: membership events, key watches and log monitors, local and remote.

A subscriber gets a bounded channel; a slow one loses the newest items (counted as dropped
frames ``events_overflow``, ``watch_overflow`` or ``monitor_overflow``) and never slows
membership or writes. A remote subscription (``gossipkv watch`` or ``gossipkv monitor`` over a
connection) counts against the connection caps on watches and ends when its connection closes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio

from . import _admin
from ._connections import ConnectionTable
from ._errors import ConnectionClosed, RemoteError, TransportError
from ._kv import Change, Clock, change_of
from ._messages import MonitorEvent, WatchEvent
from ._peer import Channel
from .membership._gossiper import MembershipEvent
from .storage import StorageLimits


class Subscriptions:
    """One node's subscribers (see the module docstring).

    Args:
      limits: the storage limits (what a change shows of a key's siblings).
      conns: the connection table (the caps on watches per connection and in all).
      dropped: where items lost to slow subscribers are counted.
      log_fanout: this process's log records, for monitors.
    """

    def __init__(
        self,
        *,
        limits: StorageLimits,
        conns: ConnectionTable,
        dropped: Counter[str],
        log_fanout: _admin.LogFanout,
    ) -> None:
        self._limits = limits
        self._conns = conns
        self._dropped = dropped
        self._log_fanout = log_fanout
        self._subscribers: list[trio.MemorySendChannel[MembershipEvent]] = []
        self._watchers: list[tuple[str, trio.MemorySendChannel[Change]]] = []

    def publish(self, event: MembershipEvent) -> None:
        """Hand one membership event to every subscriber (never waits)."""
        for send in self._subscribers:
            try:
                send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self._dropped["events_overflow"] += 1

    def close(self) -> None:
        """End every subscription (the node stopped)."""
        for send in self._subscribers:
            send.close()
        for _, watcher in self._watchers:
            watcher.close()

    @asynccontextmanager
    async def events(
        self, max_buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[MembershipEvent]]:
        """Subscribe to membership events (see :meth:`gossipkv.Node.events`)."""
        send, receive = trio.open_memory_channel[MembershipEvent](max_buffer)
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.remove(send)
            send.close()

    @asynccontextmanager
    async def watch(
        self, prefix: str = "", max_buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Change]]:
        """Subscribe to changes of keys under ``prefix`` (see :meth:`gossipkv.Node.watch`)."""
        send, receive = trio.open_memory_channel[Change](max_buffer)
        entry = (prefix, send)
        self._watchers.append(entry)
        try:
            async with receive:
                yield receive
        finally:
            self._watchers.remove(entry)
            send.close()

    def on_change(self, key: str, clock: Clock) -> None:
        if not self._watchers:  # every stored change comes here; usually nobody watches
            return
        matching = [send for prefix, send in self._watchers if key.startswith(prefix)]
        if not matching:
            return
        change = change_of(key, clock, self._limits)
        for send in matching:
            try:
                send.send_nowait(change)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._dropped["watch_overflow"] += 1

    async def serve_watch(
        self,
        channel: Channel,
        prefix: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One remote subscription: forward changes as one-way ``WatchEvent`` messages until the
        connection closes (its bounded buffer drops the newest, like :meth:`watch`).

        Raises:
          RemoteError: ``too_many_watches`` (before ``started``), over a watch cap.
        """
        with self._counted(channel):
            await self._forward_changes(channel, prefix, task_status)

    @contextmanager
    def _counted(self, channel: Channel) -> Iterator[None]:
        """Hold one of the connection's (and the peer's) watch slots: a watch or a monitor.

        Raises:
          RemoteError: ``too_many_watches``, at once, over a cap.
        """
        # Checked and counted with no checkpoint between: concurrent requests cannot overshoot.
        refusal = self._conns.watch_refusal(channel.subscriptions)
        if refusal is not None:
            raise RemoteError("too_many_watches", refusal)
        channel.subscriptions += 1
        self._conns.watches += 1
        try:
            yield
        finally:
            channel.subscriptions -= 1
            self._conns.watches -= 1

    async def _forward_changes(
        self, channel: Channel, prefix: str, task_status: trio.TaskStatus[None]
    ) -> None:
        async with self.watch(prefix) as changes, trio.open_nursery() as nursery:

            async def stop_on_close() -> None:
                await channel.wait_closed()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_close)
            task_status.started()
            async for change in changes:
                try:
                    await channel.notify(
                        WatchEvent(change.key, tuple(change.values), change.context, change.more)
                    )
                except (ConnectionClosed, TransportError):
                    break
            nursery.cancel_scope.cancel()

    async def serve_monitor(
        self,
        channel: Channel,
        level: int,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One ``gossipkv monitor``: log records at ``level`` and up and membership events, as
        one-way ``MonitorEvent`` messages, until the connection closes. Counted as a watch
        (the same caps); a slow reader loses lines (``monitor_overflow``), never blocks."""
        send, receive = trio.open_memory_channel[tuple[str, str, str]](_admin.MONITOR_BUFFER)
        with self._counted(channel):
            async with self.events() as events, trio.open_nursery() as nursery:

                async def copy_events() -> None:
                    async for event in events:
                        line = f"{event.kind} {event.node_id} {event.detail}".rstrip()
                        try:
                            send.send_nowait(("event", "info", line[: _admin.MAX_MONITOR_LINE]))
                        except trio.WouldBlock:
                            self._dropped["monitor_overflow"] += 1

                async def stop_on_close() -> None:
                    await channel.wait_closed()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(copy_events)
                nursery.start_soon(stop_on_close)
                with self._log_fanout.subscribe(send, level):
                    task_status.started()
                    async for kind, lvl, line in receive:
                        try:
                            await channel.notify(MonitorEvent(kind, lvl, line))
                        except (ConnectionClosed, TransportError):
                            break
                nursery.cancel_scope.cancel()
