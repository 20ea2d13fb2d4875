"""Decommission: a member hands off its data, leaves the cluster gracefully, and stops.

A leave announces ``leaving``; the leader publishes a partition table without this member; every
new owner of a partition this member held pulls it from here (a transfer) and confirms, and the
hinted writes go to their keys' owners. Only then is ``left`` announced (the membership core
holds it until the hand-off is done), gossiped for two more rounds, and told to the live peers,
before the node's nursery is cancelled. A hand-off that outlasts its deadline leaves the member
up (or, forced, leaves anyway). The progress is what ``gossipkv leave`` and the statistics show.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import trio

from ._errors import InvalidArgument, Unavailable
from ._kv import KeyValueService
from ._messages import LeaveRequest, Message, Shutdown
from ._partitions import PartitionTable
from ._peer import Channel
from .membership._gossiper import GossipConfig, Gossiper

log = logging.getLogger("gossipkv.node")


class Decommission:
    """One member's leave (see the module docstring).

    Args:
      gossiper: the membership core (the node's, once it runs).
      service: the data path (hints to flush, partitions confirmed pulled).
      nursery: the node's nursery (a leave asked for over the wire runs there; the end of a
        leave cancels it).
      config: ``handoff_timeout``, ``leave_timeout`` and ``gossip_interval``.
      next_evaluation: waits for the membership core's next evaluation.
      channel_to: the connection pool's dial (the shutdown notice to the live peers).

    Attributes:
      progress: the hand-off's state, reason and what is left (empty before a leave; the
        statistics' ``leave``).
      closing: the node is leaving (past its hand-off) or stopped.
    """

    def __init__(
        self,
        *,
        gossiper: Callable[[], Gossiper],
        service: Callable[[], KeyValueService],
        nursery: Callable[[], trio.Nursery],
        config: GossipConfig,
        next_evaluation: Callable[[], Awaitable[None]],
        channel_to: Callable[[str], Awaitable[Channel]],
    ) -> None:
        self._gossiper = gossiper
        self._service = service
        self._nursery = nursery
        self._config = config
        self._next_evaluation = next_evaluation
        self._channel_to = channel_to
        self.progress: dict[str, object] = {}
        self.closing = False
        self._done = trio.Event()
        self._handing_off = False
        self._table_before: PartitionTable | None = None
        self._began = math.inf

    def stopped(self) -> None:
        """The node stopped (left, or cancelled): a leave waiting for the end returns."""
        self.closing = True
        self._done.set()

    async def leave(self, handoff_seconds: float | None, force: bool) -> None:
        """Hand off, leave and stop the node (see :meth:`Node.leave`)."""
        g = self._gossiper()
        nursery = self._nursery()
        if self.closing:
            await self._done.wait()
            return
        if self._handing_off:
            raise Unavailable("a leave is already under way")
        self._handing_off = True
        try:
            await self._hand_off(handoff_seconds, force)
        finally:
            self._handing_off = False
        self.closing = True
        with trio.move_on_after(self._config.leave_timeout + 2.0):
            while not g.has_left:
                await self._next_evaluation()
        # Let the 'left' status spread before going silent (Serf LeavePropagateDelay).
        await trio.sleep(2 * self._config.gossip_interval + 0.3)
        notice = Shutdown(g.node_id, g.generation)
        with trio.move_on_after(0.5):
            async with trio.open_nursery() as notices:
                for addr in g.live_addresses():
                    notices.start_soon(self._notify_quietly, addr, notice)
        self._done.set()
        nursery.cancel_scope.cancel()

    def check_leave(self, force: bool) -> None:
        """Refuse to start a leave that would lose data: no other member is in reach to hand
        this node's data to, and ``force`` is off. A leave already under way is never refused.

        Raises:
          InvalidArgument: alone, and not forced.
        """
        g = self._gossiper()
        if self.closing or self._handing_off or force:
            return
        if g.reachable_members() <= {g.node_id}:
            raise InvalidArgument(
                "no other member is in reach to hand this node's data to; leaving would "
                "lose it (use --force to leave anyway)",
            )

    def request(self, message: LeaveRequest) -> dict[str, object]:
        """Start the leave an operator asked for over the wire (``gossipkv leave``); it runs in
        the node's nursery and its outcome shows in :attr:`progress`.

        Raises:
          InvalidArgument: no other member is in reach to hand the data to (and not forced).
        """
        g = self._gossiper()
        if self.closing or self._handing_off:
            return {"ok": True, "status": g.status}
        self.check_leave(message.force)
        within = message.timeout if message.timeout > 0 else None
        self._nursery().start_soon(self._leave_quietly, within, message.force)
        return {"ok": True, "status": "leaving"}

    async def _leave_quietly(self, handoff_seconds: float | None, force: bool) -> None:
        """A leave an operator asked for over the wire: its failure is logged and shown in the
        statistics (the operator's ``gossipkv leave`` watches them), never raised."""
        try:
            await self.leave(handoff_seconds, force)
        except Unavailable as exc:
            log.error("%s stays up: %s", self._gossiper().node_id, exc)

    async def _notify_quietly(self, addr: str, message: Message) -> None:
        try:
            channel = await self._channel_to(addr)
            await channel.notify(message)
            await channel.flush()
        except Exception as exc:  # best effort by design
            log.debug("notice to %s failed: %r", addr, exc)

    async def _hand_off(self, handoff_seconds: float | None, force: bool) -> None:
        """Announce ``leaving`` and wait until this node's partitions and hints are handed off
        (the gossiper holds the ``left`` status until then)."""
        g = self._gossiper()
        kv = self._service()
        if g.status not in ("leaving", "left"):
            self._table_before = g.table()
            self._began = trio.current_time()
        g.hold_leave = True
        g.start_leave(trio.current_time())
        limit = self._config.handoff_timeout if handoff_seconds is None else handoff_seconds
        deadline = trio.current_time() + limit
        self.progress = {"state": "handing_off"}
        while True:
            await kv.flush_hints()
            done, state = self.handed_off()
            self.progress = state
            if done:
                break
            if trio.current_time() >= deadline:
                if force:
                    log.warning("%s leaves before its hand-off finished: %s", g.node_id, state)
                    break
                self.progress = {**state, "state": "failed"}
                raise Unavailable(f"hand-off incomplete after {limit:g} s: {state['reason']}")
            with trio.move_on_after(1.0):
                await self._next_evaluation()
        self.progress = {**self.progress, "state": "leaving"}
        g.hold_leave = False

    def handed_off(self) -> tuple[bool, dict[str, object]]:
        """Whether this leaving node has handed off everything, and the progress."""
        g = self._gossiper()
        kv = self._service()
        table, before = g.table(), self._table_before
        hints = kv.hints_pending
        if g.reachable_members() <= {g.node_id} or g.removed:
            # The last member in reach has nowhere to hand anything to; a removed one's
            # partitions were re-replicated without it already.
            return True, {"partitions_left": 0, "hints_left": hints, "reason": ""}
        if table is None or before is None:
            return hints == 0, {"partitions_left": 0, "hints_left": hints, "reason": "hints"}
        if table.owned_by(g.node_id):
            return False, {
                "partitions_left": len(table.owned_by(g.node_id)),
                "hints_left": hints,
                "reason": "the leader has not moved this node's partitions yet",
            }
        waiting: dict[int, set[str]] = {}
        # Owners that are down cannot pull now: anti-entropy and read repair fill them from the
        # others when they return (the leave says so); waiting for them would never end.
        reachable = g.reachable_members()
        handed = kv.transfer_source.handed
        for p in before.owned_by(g.node_id):
            receivers = (set(table.owners[p]) - {g.node_id}) & reachable
            # Only pulls confirmed since the leave began count (one from an earlier change of
            # ownership says nothing of what this node holds now).
            missing = {r for r in receivers if handed.get((p, r), -math.inf) < self._began}
            if missing:
                waiting[p] = missing
        slow = sorted({r for rs in waiting.values() for r in rs})
        reason = (
            f"{len(waiting)} partitions not yet pulled by {', '.join(slow)}"
            if waiting
            else f"{hints} hints not delivered (no owner of their keys reachable)"
            if hints
            else ""
        )
        return not waiting and hints == 0, {
            "partitions_left": len(waiting),
            "partitions_total": len(before.owned_by(g.node_id)),
            "hints_left": hints,
            "reason": reason,
        }
