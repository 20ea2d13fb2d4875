"""Tombstone reaping: deleted keys go away once it is safe, and stay away.

A delete is a put of a tombstone sibling (DESIGN §8), so a deleted key keeps its clock on every
replica. This module decides when a replica may forget such a key, and does it. The rule joins
Riak's ``delete_mode`` (reap only when every primary returns the same tombstone) with Cassandra's
``gc_grace_seconds`` (a tombstone outlives the longest outage a replica may come back from):

A key is *reaped* (its record deleted by :meth:`StorageEngine.delete`; the log engine's
compaction then reclaims the disk) when

1. its clock holds tombstones and no live value;
2. ``KVConfig.tombstone_grace`` seconds have passed since its newest tombstone was written (the
   HLC stamp ``ts`` in the tombstone's metadata, so the age survives restarts and travels with the
   clock; a tombstone without a stamp, written before reaping existed, is kept);
3. every owner of its partition in the current table is a live, reachable member, none of them is
   still pulling the partition (a transfer in flight), and each holds the same clock or one that
   dominates it: the partition's first owner (the coordinator) asks them in one batched
   :class:`~gossipkv._messages.TombstoneCheck` per partition, then tells them to reap the keys
   all of them hold, and reaps its own copy. Each owner deletes a key only if its stored clock is
   still exactly the one checked (compare-and-delete under the key lock), so a write that arrived
   meanwhile is never lost. An owner that misses the second message keeps its tombstone;
   anti-entropy copies it back to the others and a later round reaps it again.

A member that holds an old tombstone for a partition it does not own (a former owner, a stand-in)
hands it to every current owner (a ``sync``, as ownership handoff does) and, once all of them
stored it, forgets its own copy; the owners then reap it by the rule above.

No resurrection: an old live value could only come back from a copy that never saw the tombstone.

(a) An owner that was down: rule 3 holds the reap while it is an owner, so it gets the tombstone
    (handoff, read repair, anti-entropy) before anyone forgets it.
(b) A member down for longer than the grace (removed meanwhile, or not): it may hold values whose
    tombstones were reaped while it was away. Every member persists when it was last alive
    (``membership.cbor``, refreshed every little while) and publishes in gossip the write time
    of the newest tombstone it reaped (``reaped_upto``, persisted too). A peer whose data dir
    shows it was last alive more than ``tombstone_grace`` ago starts with its data path closed
    (replica and client requests refused, no anti-entropy, handoff or transfers), learns the
    cluster's ``reaped_upto`` from its first gossip, and if any member reaped a tombstone written
    after it was last alive it wipes its replica and hints (one log line says so) and pulls every
    partition it owns again from the other owners, like Cassandra's advice to rebuild a node
    down longer than gc_grace; otherwise (a whole cluster restarted after a long stop, say)
    nothing was reaped behind its back and it keeps its data. A member that learns it was
    removed while away rejoins as a new member with an empty replica.
(c) Hints: a hint held longer than the grace is dropped instead of delivered (counted in
    ``hints_expired``); its owner gets the key from the other owners.
(d) Anti-entropy, transfers and read repair copy between current owners only, covered by (a) and
    (b); the keys a former owner still holds for partitions it lost are handed to the owners by
    ownership handoff, which must finish within the grace like any other repair.

The operator's part (README, Operations -> deletes): ``tombstone_grace`` must exceed the longest
outage you will repair by handoff rather than by rebuilding the member; never restore a data dir
older than the grace (start it empty instead); keep the clocks of the members roughly in sync
(the grace is measured on wall clocks, through the hybrid logical clock).

Per-key actor epochs (:class:`~gossipkv._dvv.ActorMint`) make reaping safe for a key written again:
a replica that no longer holds the key mints a fresh actor, so the new write can never carry a dot
an old tombstone already covers.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from . import _codec, _dvv
from ._antientropy import run_jittered
from ._dvv import DVVSet, Sibling
from ._errors import (
    ClusterNotReady,
    DecodeError,
    GossipKVError,
    InvalidArgument,
    InvalidClock,
    RemoteError,
    TransportError,
    Unavailable,
)
from ._messages import Message, TombstoneCheck, TombstoneState

if TYPE_CHECKING:
    from ._replica_store import ReplicaStore

log = logging.getLogger("gossipkv.reaper")

Clock = DVVSet[Sibling]

#: Keys one partition offers for reaping per round at most (one request to each owner).
MAX_KEYS_PER_CHECK = 512
#: The longest wait between reaping rounds (shorter graces check more often: a quarter of it).
MAX_REAP_INTERVAL = 60.0
_HLC_COUNTER_BITS = 16


def tombstone_time(clock: Clock) -> int | None:
    """When the newest tombstone of a tombstone-only ``clock`` was written, in wall-clock ms.

    ``None`` when the clock holds a live value, no tombstone, or a tombstone without an HLC stamp
    (written before reaping existed: such a key is kept).
    """
    newest: int | None = None
    for sib in _dvv.values(clock):
        if not sib.tombstone:
            return None
        ts = sib.meta.get("ts")
        if type(ts) is not int or ts <= 0:
            return None
        ms = ts >> _HLC_COUNTER_BITS
        newest = ms if newest is None else max(newest, ms)
    return newest


@dataclass(slots=True)
class ReaperCounters:
    """What this peer's tombstone reaping did (as :class:`~gossipkv.NodeStatistics` reports it)."""

    rounds: int = 0
    reaped: int = 0
    checked: int = 0
    blocked: int = 0
    errors: int = 0


class TombstoneReaper:
    """One peer's tombstone reaping: the coordinating side for the partitions it leads, and the
    answering side for every partition it owns.

    Args:
      service: this peer's data path (storage, table, reachability, replica calls, key locks).
      rng: randomness for the jitter.
      grace: ``KVConfig.tombstone_grace`` in seconds (``inf``: keep every tombstone).
      wall_ms: the wall clock in milliseconds (faked in simulation).

    Attributes:
      pulling: the members still pulling a partition (set by the node from gossip).
      gone: whether a member was removed or left (set by the node).
      transferring: whether a partition is being pulled here (set by the data path).
    """

    def __init__(
        self,
        service: ReplicaStore,
        rng: random.Random,
        *,
        grace: float,
        wall_ms: Callable[[], int],
    ) -> None:
        self._kv = service
        self._rng = rng
        self.grace = grace
        self._wall_ms = wall_ms
        self.pulling: Callable[[int], set[str]] = lambda partition: set()
        self.gone: Callable[[str], bool] = lambda member: False
        #: Whether a partition is being pulled to this peer right now (set by the data path).
        self.transferring: Callable[[int], bool] = lambda partition: False
        #: Called (and awaited) with ``reaped_upto`` before a record is deleted: the node
        #: publishes and persists it.
        self.on_reaped_upto: Callable[[int], Awaitable[None]] | None = None
        #: Tombstone-only keys stored here -> when their newest tombstone was written (ms).
        self._candidates: dict[str, int] = {}
        #: The write time (ms) of the newest tombstone reaped here (published in gossip).
        self.reaped_upto = 0
        self.counters = ReaperCounters()

    @property
    def enabled(self) -> bool:
        return math.isfinite(self.grace)

    @property
    def pending(self) -> int:
        """Tombstone-only keys stored here (reaped once old enough and held by every owner)."""
        return len(self._candidates)

    def note(self, key: str, clock: Clock) -> None:
        """A clock this replica now stores for ``key`` (the data path's change hook)."""
        ms = tombstone_time(clock) if self.enabled else None
        if ms is None:
            self._candidates.pop(key, None)
        else:
            self._candidates[key] = ms

    def forget(self, key: str) -> None:
        self._candidates.pop(key, None)

    async def run(self) -> None:
        """Index the tombstones already stored, then reap every interval until cancelled."""
        if not self.enabled:
            return
        async for key, clock in self._kv.storage.scan(0, 1):
            self.note(key, clock)
        interval = max(0.5, min(self.grace / 4, MAX_REAP_INTERVAL))
        await run_jittered(interval, self._rng, self.round, self._round_failed)

    def _round_failed(self, exc: GossipKVError) -> None:
        self.counters.errors += 1
        self._kv.count_error(exc)

    def _ripe(self, q: int, me: str, owners: tuple[tuple[str, ...], ...]) -> dict[int, list[str]]:
        """Keys old enough to reap, by partition: of the partitions this peer coordinates (it
        is their first owner) and of those it does not own at all."""
        cutoff = self._wall_ms() - int(self.grace * 1000)
        out: dict[int, list[str]] = {}
        for key, ms in self._candidates.items():
            if ms > cutoff:
                continue
            p = _dvv.partition_of(key, q)
            if owners[p] and (owners[p][0] == me or me not in owners[p]):
                out.setdefault(p, []).append(key)
        return out

    async def round(self) -> int:
        """Reap what every owner holds among the old tombstones of the partitions this peer
        coordinates (it is their first owner).

        Returns:
          The keys reaped here this round.
        """
        kv = self._kv
        table = kv.table()
        if table is None or not table.owners or not self._candidates:
            return 0
        self.counters.rounds += 1
        before = self.counters.reaped
        for p, keys in sorted(self._ripe(table.q, kv.node_id, table.owners).items()):
            if kv.table() is not table:
                break  # the owners changed: start again from the new table next round
            if kv.node_id in table.owners[p]:
                await self._reap_partition(p, table.q, table.owners[p], sorted(keys))
            else:
                await self._hand_back(p, table.owners[p], sorted(keys))
        return self.counters.reaped - before

    def _blocked(self, partition: int, owners: tuple[str, ...]) -> bool:
        """Whether an owner is away, gone, or still pulling the partition (nothing is reaped)."""
        kv = self._kv
        reachable = kv.reachable()
        if any(o not in reachable or self.gone(o) for o in owners):
            return True
        if self.pulling(partition) & set(owners):
            return True
        return self.transferring(partition)

    async def _reap_partition(
        self, partition: int, q: int, owners: tuple[str, ...], keys: list[str]
    ) -> None:
        kv = self._kv
        if self._blocked(partition, owners):
            self.counters.blocked += 1
            return
        offered: list[str] = []
        clocks: list[bytes] = []
        written: list[int] = []
        for key in keys[:MAX_KEYS_PER_CHECK]:
            clock = await kv.storage.get(key)
            ms = None if clock is None else tombstone_time(clock)
            if clock is None or ms is None:
                self.forget(key)  # gone, or written again since it was noted
                continue
            offered.append(key)
            clocks.append(_codec.dumps_canonical(_dvv.clock_to_plain(clock)))
            written.append(ms)
        if not offered:
            return
        self.counters.checked += len(offered)
        others = [o for o in owners if o != kv.node_id]
        held = [True] * len(offered)
        check = TombstoneCheck(partition, q, tuple(offered), tuple(clocks))
        for owner in others:
            flags = await self._ask(owner, check)
            if flags is None:
                self.counters.blocked += 1
                return
            held = [a and b for a, b in zip(held, flags, strict=True)]
        chosen = [i for i, ok in enumerate(held) if ok]
        if not chosen:
            return
        # Published (gossip) and persisted before any record goes, so a member that was away
        # longer than the grace learns that tombstones written after it left were reaped.
        upto = max(written[i] for i in chosen)
        if upto > self.reaped_upto:
            self.reaped_upto = upto
            if self.on_reaped_upto is not None:
                await self.on_reaped_upto(upto)
        reap = TombstoneCheck(
            partition,
            q,
            tuple(offered[i] for i in chosen),
            tuple(clocks[i] for i in chosen),
            reap=True,
        )
        # The others first, then this replica: an owner that misses the message keeps its
        # tombstone, which anti-entropy spreads back and a later round reaps again.
        for owner in others:
            await self._ask(owner, reap)
        for key, raw in zip(reap.keys, reap.clocks, strict=True):
            await self.reap_if(key, raw)

    async def _hand_back(self, partition: int, owners: tuple[str, ...], keys: list[str]) -> None:
        """Give old tombstones of a partition this peer does not own to its owners, and forget
        each one every owner stored (they reap it by the rule, in their own time)."""
        kv = self._kv
        if self._blocked(partition, owners):
            self.counters.blocked += 1
            return
        for key in keys[:MAX_KEYS_PER_CHECK]:
            clock = await kv.storage.get(key)
            if clock is None or tombstone_time(clock) is None:
                self.forget(key)
                continue
            try:
                for owner in owners:
                    await kv.write_replica(owner, key, clock, "")
            except GossipKVError as exc:
                self.counters.errors += 1
                log.debug("handing tombstone %r to the owners failed: %s", key, exc)
                return  # an owner is slow or away: try again next round
            await self.reap_if(key, _codec.dumps_canonical(_dvv.clock_to_plain(clock)))

    async def _ask(self, owner: str, message: TombstoneCheck) -> list[bool] | None:
        kv = self._kv
        with trio.move_on_after(kv.config.replica_timeout * 5):
            try:
                reply = await kv.send(owner, message)
            except (TransportError, Unavailable, RemoteError, ClusterNotReady) as exc:
                self.counters.errors += 1
                log.debug("tombstone check with %s failed: %s", owner, exc)
                return None
            if not isinstance(reply, TombstoneState) or len(reply.flags) != len(message.keys):
                self.counters.errors += 1
                return None
            return list(reply.flags)
        self.counters.errors += 1
        return None

    async def reap_if(self, key: str, raw: bytes) -> bool:
        """Forget ``key`` here if its stored clock is exactly ``raw`` and tombstone-only."""
        kv = self._kv
        async with kv.lock(key):
            clock = await kv.storage.get(key)
            written = None if clock is None else tombstone_time(clock)
            if clock is None or written is None:
                return False
            if _codec.dumps_canonical(_dvv.clock_to_plain(clock)) != raw:
                return False
            self.reaped_upto = max(self.reaped_upto, written)
            if not await kv.storage.delete(key):
                return False
        self.forget(key)
        self.counters.reaped += 1
        return True

    async def handle(self, message: Message) -> TombstoneState:
        """Answer a coordinator's :class:`TombstoneCheck` (check, or reap).

        Raises:
          RemoteError: ``bad_request`` for a partition out of range, another partition count, a
            partition this peer does not own, or keys and clocks that do not pair up.
          ClusterNotReady: no partition table yet.
        """
        if not isinstance(message, TombstoneCheck):
            raise RemoteError("unsupported", f"unsupported request {message.TAG!r}")
        kv = self._kv
        table = kv.table()
        if table is None or not table.owners:
            raise ClusterNotReady("the cluster has no partition table yet; retry shortly")
        p = message.partition
        if message.q != table.q or not 0 <= p < table.q:
            raise InvalidArgument(f"partition {p} of q={message.q} is not in the table")
        if kv.node_id not in table.owners[p]:
            raise InvalidArgument(f"this peer does not own partition {p}")
        if len(message.keys) != len(message.clocks) or len(message.keys) > MAX_KEYS_PER_CHECK:
            raise InvalidArgument("keys and clocks must pair up (at most 512)")
        if any(_dvv.partition_of(k, table.q) != p for k in message.keys):
            raise InvalidArgument(f"a key listed is not in partition {p}")
        if not self.enabled or self.transferring(p):
            # Still filling the partition (or never reaping): hold on to everything.
            return TombstoneState(tuple(False for _ in message.keys))
        flags: list[bool] = []
        for key, raw in zip(message.keys, message.clocks, strict=True):
            if message.reap:
                flags.append(await self.reap_if(key, raw))
            else:
                flags.append(await self._holds(key, raw))
        return TombstoneState(tuple(flags))

    async def _holds(self, key: str, raw: bytes) -> bool:
        kv = self._kv
        try:
            offered = _dvv.clock_from_plain(
                _codec.loads_value(raw, max_depth=kv.limits.max_clock_depth)
            )
        except (DecodeError, InvalidClock) as exc:
            raise RemoteError("invalid_clock", str(exc)) from exc
        local = await kv.storage.get(key)
        if local is None:
            return False
        return _dvv.equal(local, offered) or _dvv.less(offered, local)


# --- hint ages ----------------------------------------------------------------------------------

#: The actor of the entry that carries a stored hint's age: it sorts before every real actor
#: (member names are printable) and holds no value, so the hint stays a valid clock and the age
#: is written in the same record, surviving restarts.
HINT_AGE_ACTOR = "\x1ehint-stored-ms"


def with_hint_age(clock: Clock, stored_ms: int) -> Clock:
    """``clock`` as kept in the hint store: with an entry saying when the hint was first kept."""
    entries = tuple(e for e in clock.entries if e.actor != HINT_AGE_ACTOR)
    return DVVSet((_dvv.Entry(HINT_AGE_ACTOR, max(1, stored_ms), ()), *entries), clock.anonymous)


def hint_age(clock: Clock) -> tuple[int | None, Clock]:
    """When a stored hint was first kept (``None``: a hint from before ages were kept) and the
    clock to deliver (without the age entry)."""
    if clock.entries and clock.entries[0].actor == HINT_AGE_ACTOR:
        return clock.entries[0].counter, DVVSet(clock.entries[1:], clock.anonymous)
    return None, clock
