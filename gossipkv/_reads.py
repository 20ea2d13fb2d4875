"""Coordinated reads and read repair.

A read asks every replica of the key's preference list and answers once R of them did (a member
still pulling the partition is asked, but R counts among the others when it can); once all
answered or timed out, the stale ones are brought up to date with the merge of what came back,
in the background (or before answering, with ``blocking_read_repair``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from ._errors import GossipKVError
from ._fanout import Fanout, deliver
from ._kv_model import Clock, GetResult
from ._messages import ReplicaGet
from ._replica_calls import ReplicaCalls
from ._replication import quorum_size, read_plan, read_result, stale_replicas
from .storage import NOT_CACHED

log = logging.getLogger("gossipkv.kv")


class Reads:
    """The reads this peer coordinates, and the repairs they find due."""

    def __init__(self, calls: ReplicaCalls) -> None:
        self._calls = calls
        self._replica = calls.replica
        self._config = calls.config
        self._counters = calls.counters
        self._repairs = trio.Semaphore(calls.config.max_pending_repairs)

    async def get(self, key: str, *, r: int = 0, local: bool = False) -> GetResult:
        """Read ``key`` from R replicas (or only this peer's own replica with ``local``).

        Raises:
          ClusterNotReady, QuorumNotReached, StorageError, KeyTooLarge, InvalidKey.
        """
        replica = self._replica
        replica.check_key(key)
        if local:
            self._counters.gets += 1
            return replica.result(key, await replica.storage.get(key))
        reserved = self._calls.estimate(key, 0)
        await self._calls.admission.acquire(reserved)
        fan = self.start(key, r=r, reserved=reserved)
        assert fan is not None  # reserved already
        await fan.wait_enough()
        result = self.outcome(key, fan)
        if self._config.blocking_read_repair:
            await fan.wait_done()
            await self.repair(key, fan.replies)
        return result

    def start(
        self,
        key: str,
        *,
        r: int = 0,
        on_result: Callable[[GetResult | GossipKVError], None] | None = None,
        reserved: int | None = None,
    ) -> Fanout | None:
        """Start a quorum read without waiting: ask every replica of the preference list.

        ``on_result`` is called once, when R replicas answered (or all did), with the result or
        the error; it runs in whichever task delivers that answer and must not block.
        ``reserved`` is a memory reservation the caller already holds (it passes to the read);
        without one the read reserves its own, and returns ``None`` (having done nothing) when
        the budget has no room: wait for room with :meth:`get` instead.

        Raises:
          ClusterNotReady, QuorumNotReached, KeyTooLarge, InvalidKey, ValueError: at once.
        """
        calls, replica, admission = self._calls, self._replica, self._calls.admission
        try:
            replica.check_key(key)
            targets, n = calls.targets(key)
            need = quorum_size(r, n, "r", self._config.r)
            asked, counted = read_plan(targets, need, calls.filling(key))
        except BaseException:
            if reserved is not None:
                admission.release(reserved)
            raise
        if reserved is None:
            reserved = calls.estimate(key, 0)
            if not admission.try_acquire(reserved):
                return None
        self._counters.gets += 1
        fan = calls.fanout(
            asked,
            need,
            counted=counted,
            on_enough=None
            if on_result is None
            else partial(deliver, partial(self.outcome, key), on_result),
            on_done=None
            if self._config.blocking_read_repair
            else partial(self._repair_if_stale, key),
            release=partial(admission.release, reserved),
        )
        calls.expiry.track(fan)
        storage = replica.storage
        for member in asked:
            if member == replica.node_id:
                try:
                    clock = storage.read_cached(key)
                except GossipKVError as exc:
                    replica.count_error(exc)
                    fan.failed(member)
                    continue
                if clock is NOT_CACHED:
                    calls.nursery_or_fail().start_soon(calls.ask, fan, member, key)
                else:
                    fan.answered(member, clock)
            elif not calls.start(fan, member, ReplicaGet(key), calls.on_get_reply):
                calls.nursery_or_fail().start_soon(calls.ask, fan, member, key)
        fan.check()
        return fan

    def outcome(self, key: str, fan: Fanout) -> GetResult:
        """What a read whose replicas answered returns (raises if too few did)."""
        clock = read_result(fan.tally, last_write_wins=self._config.last_write_wins)
        result = self._replica.result(key, clock)
        self._counters.get_latency.observe(trio.current_time() - fan.started)
        return result

    # --- read repair ---------------------------------------------------------------------------

    def _stale(self, replies: dict[str, Clock | None]) -> tuple[Clock | None, list[str]]:
        return stale_replicas(replies, last_write_wins=self._config.last_write_wins)

    def _repair_if_stale(self, key: str, fan: Fanout) -> None:
        """Called once every replica of a read answered (or timed out): repair the stale ones."""
        final, stale = self._stale(fan.replies)
        nursery = self._calls.nursery
        if final is None or not stale or nursery is None:
            return
        try:
            self._repairs.acquire_nowait()
        except trio.WouldBlock:
            self._counters.read_repairs_skipped += 1
            return
        nursery.start_soon(self._release_after, self._repair_members(key, final, stale))

    async def _release_after(self, work: Awaitable[None]) -> None:
        try:
            await work
        finally:
            self._repairs.release()

    async def repair(self, key: str, replies: dict[str, Clock | None]) -> None:
        """Bring the stale ones of ``replies`` up to the merge of them all."""
        final, stale = self._stale(replies)
        if final is not None and stale:
            await self._repair_members(key, final, stale)

    async def _repair_members(self, key: str, final: Clock, stale: list[str]) -> None:
        async with trio.open_nursery() as nursery:
            for member in stale:
                nursery.start_soon(self._repair_one, member, key, final)

    async def _repair_one(self, member: str, key: str, clock: Clock) -> None:
        try:
            await self._calls.write(member, key, clock, "")
            self._counters.read_repairs += 1
        except GossipKVError as exc:
            self._replica.count_error(exc)

    async def repair_key(self, key: str) -> bool:
        """Read ``key`` from every reachable owner and bring the stale replicas (this one
        included) up to date by ``sync``: how a quarantined record is restored.

        Returns:
          True when another replica answered, so this one now holds what they hold.

        Raises:
          ClusterNotReady: no partition table yet (try again later).
        """
        targets, _ = self._calls.targets(key)
        replies = await self._calls.gather(key, [m for m, _ in targets])
        if not any(m != self._replica.node_id for m in replies):
            return False
        replies.setdefault(self._replica.node_id, None)
        await self.repair(key, replies)
        return True
