"""Hinted handoff: writes a stand-in kept for an unreachable owner, delivered when it is back.

A member that stands in for an owner (sloppy quorum) stores the write as usual and keeps a
hint: the clock, under ``owner<US>key`` in a second engine, with the time it was first kept. A
loop hands each hint to its owner once the owner is reachable (the current local clock, synced
with the hinted one), and drops it once delivered. A hint kept longer than ``tombstone_grace``
is dropped instead (it could bring back a value whose tombstone was reaped meanwhile), and so is
this peer's own copy of a key it does not own. A leaving member flushes every hint to the
reachable owners at once.

It sees the data path only through :class:`~gossipkv._replica_store.ReplicaStore`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio

from . import _dvv
from ._errors import GossipKVError
from ._reaper import hint_age, with_hint_age
from ._replica_store import Clock, ReplicaStore
from ._replication import preference_list
from .storage import StorageEngine

log = logging.getLogger("gossipkv.kv")

#: Separates the owner from the key in a hint's name (a unit separator: no member name has it).
HINT_SEP = "\x1f"


class HintCounters(Protocol):
    hints_stored: int
    hints_delivered: int
    hints_expired: int


class HintedHandoff:
    """One peer's hints (see the module docstring).

    Args:
      store: this peer's data path.
      hints: the engine the hints are kept in.
      counters: where hints stored, delivered and expired are counted.
      wall_ms: the wall clock in milliseconds (hint ages; faked in simulation).
      forget: tells the tombstone reaper a key this peer held is gone.
      on_quarantined: tells quarantine repair a hint's record was unreadable.
    """

    def __init__(
        self,
        store: ReplicaStore,
        hints: StorageEngine,
        *,
        counters: HintCounters,
        wall_ms: Callable[[], int],
        forget: Callable[[str], None],
        on_quarantined: Callable[[str, str], None],
    ) -> None:
        self._kv = store
        self._hints = hints
        self._counters = counters
        self._wall_ms = wall_ms
        self._forget = forget
        self._on_quarantined = on_quarantined
        #: (owner, key) -> when the hint was first kept (wall-clock ms).
        self._pending: dict[tuple[str, str], int] = {}

    async def load(self) -> None:
        """Learn the hints kept before this peer (re)started."""
        now_ms = self._wall_ms()
        async for key, clock in self._hints.scan(0, 1):
            stored_ms, clock = hint_age(clock)
            if _dvv.size(clock) or clock.entries:
                owner, _, real = key.partition(HINT_SEP)
                # A hint kept before ages were recorded counts from now.
                self._pending[(owner, real)] = stored_ms or now_ms

    async def rewrite(self, owner: str, key: str) -> None:
        """Keep a hint for ``owner`` again from this replica's own copy of ``key`` (after the
        hint's record was quarantined)."""
        async with self._kv.lock(key):
            await self.store(owner, key, await self._kv.storage.get(key))

    def quarantined(self, hint_key: str) -> None:
        owner, _, key = hint_key.partition(HINT_SEP)
        self._pending.pop((owner, key), None)
        self._on_quarantined(owner, key)

    async def store(self, owner: str, key: str, clock: Clock | None) -> None:
        """Keep ``clock`` for ``owner`` until the handoff loop delivers it (under the key lock),
        with the time the hint was first kept (see :func:`gossipkv._reaper.with_hint_age`)."""
        if clock is None:
            return
        stored_ms = self._pending.get((owner, key)) or self._wall_ms()
        try:
            await self._hints.put(f"{owner}{HINT_SEP}{key}", with_hint_age(clock, stored_ms))
        except GossipKVError as exc:  # a key too long to hint is still a stored copy
            self._kv.count_error(exc)
            return
        self._pending[(owner, key)] = stored_ms
        self._counters.hints_stored += 1

    def _expired(self, owner: str, key: str) -> bool:
        """Whether the hint was kept longer than ``tombstone_grace``: delivering it could bring
        back a value whose tombstone the owners have reaped since."""
        stored_ms = self._pending.get((owner, key))
        grace_ms = self._kv.config.tombstone_grace * 1000
        return stored_ms is not None and self._wall_ms() - stored_ms > grace_ms

    async def _expire(self, owner: str, key: str) -> None:
        """Drop an expired hint, and this peer's own copy of the key when it does not own it
        (that copy is the stand-in write itself, as old as the hint: ownership handoff would
        otherwise deliver it). The owner gets the key from the other owners."""
        async with self._kv.lock(key):
            await self._hints.delete(f"{owner}{HINT_SEP}{key}")
            table = self._kv.table()
            if table is not None and table.owners:
                if self._kv.node_id not in table.owners[_dvv.partition_of(key, table.q)]:
                    if await self._kv.storage.delete(key):
                        self._forget(key)
        self._pending.pop((owner, key), None)
        self._counters.hints_expired += 1
        log.warning(
            "dropped the hint of %r for %s: kept longer than tombstone_grace (%.0fs)",
            key,
            owner,
            self._kv.config.tombstone_grace,
        )

    async def run(self) -> None:
        """Deliver pending hints every ``handoff_interval`` until cancelled."""
        next_at = trio.current_time()
        while True:
            next_at += self._kv.config.handoff_interval
            await trio.sleep_until(next_at)
            if not self._pending:
                continue
            reachable = self._kv.reachable()
            for owner, key in list(self._pending):
                hint_key = f"{owner}{HINT_SEP}{key}"
                try:
                    if self._expired(owner, key):
                        await self._expire(owner, key)
                        continue
                    if owner not in reachable:
                        continue
                    clock = await self._hints.get(hint_key)
                    if clock is not None and clock.entries:
                        payload = await self._payload(key, clock)
                        await self._kv.write_replica(owner, key, payload, "")
                    async with self._kv.lock(key):
                        latest = await self._hints.get(hint_key)
                        if (
                            latest is not None
                            and clock is not None
                            and not _dvv.equal(latest, clock)
                        ):
                            continue  # a newer hinted write arrived meanwhile: deliver it next round
                        await self._hints.delete(hint_key)
                except GossipKVError as exc:
                    self._kv.count_error(exc)
                    continue
                self._pending.pop((owner, key), None)
                self._counters.hints_delivered += 1

    async def _payload(self, key: str, hint: Clock) -> Clock:
        """What a hint delivers: the hinted clock synced with what this replica holds now (it
        may have moved on since)."""
        _, hinted = hint_age(hint)
        current = await self._kv.storage.get(key)
        return hinted if current is None else _dvv.sync(hinted, current)

    async def flush(self) -> int:
        """Hand every pending hint to the reachable current owners of its key, now: a leaving
        member cannot wait for the owner it stood in for to come back. A hint that reached at
        least one owner is dropped (read repair and anti-entropy bring the owner it was for up
        to date when it returns). A hint kept longer than ``tombstone_grace`` is dropped.

        Returns:
          The hints still pending (no owner of their key is reachable).
        """
        for owner, key in list(self._pending):
            hint_key = f"{owner}{HINT_SEP}{key}"
            try:
                if self._expired(owner, key):
                    await self._expire(owner, key)
                    continue
                async with self._kv.lock(key):
                    clock = await self._hints.get(hint_key)
                    if clock is not None and clock.entries:
                        payload = await self._payload(key, clock)
                        targets, _ = preference_list(
                            self._kv.table(),
                            key,
                            self._kv.reachable(),
                            sloppy=self._kv.config.sloppy_quorum,
                        )
                        owners = [m for m, hint in targets if not hint and m != self._kv.node_id]
                        delivered = 0
                        for member in owners:
                            try:
                                await self._kv.write_replica(member, key, payload, "")
                            except GossipKVError as exc:
                                self._kv.count_error(exc)
                                continue
                            delivered += 1
                        if not delivered:
                            continue
                    await self._hints.delete(hint_key)
            except GossipKVError as exc:
                self._kv.count_error(exc)
                continue
            self._pending.pop((owner, key), None)
            self._counters.hints_delivered += 1
        return len(self._pending)

    def drop_pending(self) -> None:
        """Forget every pending hint (the hint store was emptied)."""
        self._pending.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)
