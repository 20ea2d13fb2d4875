"""The replicated key-value path: quorum reads and writes, read repair, hinted handoff.

Patterns: Quorum (R/W of N over the partition's preference list, sloppy: an unreachable owner is
stood in for by the next reachable member, which keeps a durable hint), Versioned Value / Version
Vector (every key is a DVVSet; a put is ``update(new(context, value), local, actor)`` at a replica
of the key, every other replica ``sync``s), Request Waiting List (replies collected per request),
Idempotent Receiver (a retried client request returns the first result).

:class:`KeyValueService` is the facade one peer's data path is used through. The rooms behind it:

- :mod:`gossipkv._replication`: the coordinator's decisions (sans-IO);
- :mod:`gossipkv._replica`: this peer's own copy (merges, locks, the writes minted here);
- :mod:`gossipkv._replica_calls` and :mod:`gossipkv._fanout`: the requests to a key's replicas
  and the runtime around their replies;
- :mod:`gossipkv._reads` and :mod:`gossipkv._writes`: coordinated reads (with read repair) and
  writes;
- hinted handoff, anti-entropy, ownership handoff, transfers and the tombstone reaper, which see
  the data path only through :class:`~gossipkv._replica_store.ReplicaStore`.

The service never waits on the leader: it routes by the newest partition table this peer accepted.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import trio

from ._admission import ByteBudget
from ._antientropy import AntiEntropy
from ._errors import ClusterNotReady, GossipKVError, InvalidArgument, RemoteError
from ._fanout import Fanout
from ._handoff import OwnershipHandoff
from ._hints import HintedHandoff
from ._kv_model import (
    Change,
    Clock,
    GetResult,
    KVCounters,
    PutResult,
    change_of,
    check_request,
    decode_context,
    encode_context,
    encode_wire_clock,
    live_values,
    visible,
)
from ._messages import KvGet, KvPut, KvResult, Message
from ._partitions import PartitionTable
from ._reads import Reads
from ._reaper import TombstoneReaper
from ._repair import QuarantineRepair
from ._replica import Replica
from ._replica_calls import ReplicaCalls, ReplyCallback, SendRequest, StartRequest
from ._replica_store import KVConfig
from ._replication import Target
from ._transfer import Transfers, TransferSource
from ._writes import Writes
from .storage import StorageEngine, StorageLimits

__all__ = [
    "Change",
    "Clock",
    "GetResult",
    "KVCounters",
    "KeyValueService",
    "PutResult",
    "ReplyCallback",
    "SendRequest",
    "StartRequest",
    "change_of",
    "check_request",
    "decode_context",
    "encode_context",
    "encode_wire_clock",
    "live_values",
    "visible",
]


class KeyValueService:
    """One peer's part of the data path (coordinator and replica).

    Args:
      node_id: this peer's name (actors are minted from it).
      storage: the replica's engine.
      hints: a second engine holding hinted writes for unreachable owners.
      table: returns the newest partition table (``None`` before the cluster formed).
      reachable: returns the members this peer can currently send to (itself included).
      send: sends a request to a member by name, bounded by the caller.
      start: starts a request over an open connection without waiting (see
        :data:`StartRequest`); without it every replica call runs in a task of its own.
      rng: randomness (the actor incarnation).
      config, limits: tuning and size limits.
      stamp: a hybrid logical clock (only ``last_write_wins`` uses it to order writes).
      refusals: where writes refused by a limit are counted (by wire error code).
      queued_bytes: bytes queued for sending on this peer's connections (they count against the
        data path's memory budget; call ``admission.wake()`` when they shrink).
      known_table: the partition table this peer knew before it started (from its data dir):
        what a newer table moves is pulled from the members that held it (see
        :class:`~gossipkv._transfer.Transfers`).
      gone: whether a member was removed from the cluster (its transfers are dropped).
      pulling: the members still pulling a partition: a read asks them but counts R among
        the others when it can.
      wall_ms: the wall clock in milliseconds (tombstone and hint ages; faked in simulation).
    """

    def __init__(
        self,
        *,
        node_id: str,
        storage: StorageEngine,
        hints: StorageEngine,
        table: Callable[[], PartitionTable | None],
        reachable: Callable[[], set[str]],
        send: SendRequest,
        start: StartRequest | None = None,
        rng: random.Random,
        config: KVConfig,
        limits: StorageLimits,
        stamp: Callable[[], int] | None = None,
        refusals: Counter[str] | None = None,
        queued_bytes: Callable[[], int] | None = None,
        known_table: PartitionTable | None = None,
        gone: Callable[[str], bool] | None = None,
        pulling: Callable[[int], set[str]] | None = None,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.node_id = node_id
        self.storage = storage
        self.hints = hints
        self._table = table
        self._reachable = reachable
        self.config = config
        self.limits = limits
        self.counters = KVCounters()
        #: Writes refused by a limit, by wire error code (``value_too_deep``, ...): shared with
        #: the node, which counts connection refusals in the same map.
        self.refusals: Counter[str] = refusals if refusals is not None else Counter()
        self._wall_ms = (
            wall_ms if wall_ms is not None else (lambda: int(trio.current_time() * 1000))
        )
        # An HLC stamp (``ms << 16 | counter``), as the node's hybrid clock gives.
        stamp = stamp if stamp is not None else (lambda: self._wall_ms() << 16)
        #: This peer's own copy of the data.
        self.replica = Replica(
            node_id=node_id,
            storage=storage,
            config=config,
            limits=limits,
            counters=self.counters,
            refusals=self.refusals,
            actor_seed=rng.getrandbits(63),
        )
        #: The memory budget of coordinated reads and writes (see ``KVConfig``).
        self.admission = ByteBudget(config.max_inflight_bytes, queued_bytes)
        self._calls = ReplicaCalls(
            replica=self.replica,
            table=table,
            reachable=reachable,
            send=send,
            start=start if start is not None else (lambda member, message, callback: None),
            pulling=pulling if pulling is not None else (lambda partition: set()),
            admission=self.admission,
            config=config,
            counters=self.counters,
        )
        self._reads = Reads(self._calls)
        self._writes = Writes(self._calls, stamp=stamp)
        #: Background anti-entropy (started by :meth:`run`), with its own randomness stream.
        background_seed = rng.getrandbits(64)
        self.anti_entropy = AntiEntropy(self, random.Random(background_seed))
        #: Background ownership handoff (started by :meth:`run`), with its own randomness stream
        #: (derived, so the draws from ``rng`` stay what they were before handoff existed).
        self.ownership_handoff = OwnershipHandoff(
            self, random.Random(background_seed ^ 0x5A5A), self.anti_entropy.trees
        )
        #: Forgets tombstones every owner holds once they are older than the grace.
        self.reaper = TombstoneReaper(
            self,
            random.Random(background_seed ^ 0x7E7E),
            grace=config.tombstone_grace,
            wall_ms=self._wall_ms,
        )
        #: Restores records the engines quarantined (unreadable) from the other replicas.
        self.repair = QuarantineRepair(
            repair_key=self.repair_key,
            rewrite_hint=self.rewrite_hint,
            interval=config.handoff_interval,
            rng=random.Random(background_seed ^ 0xA5A5),
        )
        #: Writes kept for unreachable owners, delivered when they are back.
        self.hinted = HintedHandoff(
            self,
            hints,
            counters=self.counters,
            wall_ms=self._wall_ms,
            forget=self.reaper.forget,
            on_quarantined=self.repair.hint_quarantined,
        )
        self.replica.on_stored = self.reaper.note
        self.replica.keep_hint = self.hinted.store
        #: Pulls what a table change moved to this peer, from the members that held it.
        self.transfers = Transfers(
            node_id=node_id,
            table=table,
            known=known_table,
            reachable=reachable,
            removed=gone if gone is not None else (lambda member: False),
            fetch=self._calls.fetch_partition,
            store=self.replica.store_page,
            compare=self.anti_entropy.compare,
            # Transfers are anti-entropy aimed at what a table change moved: off with it.
            interval=config.handoff_interval if config.anti_entropy_interval > 0 else 0.0,
            rng=random.Random(background_seed ^ 0x3C3C),
        )
        self.reaper.transferring = lambda p: any(
            t.partition == p for t in self.transfers.in_flight()
        )
        #: Answers other members' transfers of partitions this peer holds.
        self.transfer_source = TransferSource(
            table=table, keys=storage.keys, clocks=self.replica.clock_bytes
        )
        storage.on_quarantine = self.repair.key_quarantined
        hints.on_quarantine = self.hinted.quarantined
        for key in storage.damaged_at_open():
            self.repair.key_quarantined(key)
        for key in hints.damaged_at_open():
            self.hinted.quarantined(key)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background work (read repairs, handoff) until cancelled."""
        await self.hinted.load()
        async with trio.open_nursery() as nursery:
            self._calls.nursery = nursery
            nursery.start_soon(self.hinted.run)
            nursery.start_soon(self._calls.expiry.run)
            nursery.start_soon(self.anti_entropy.run)
            nursery.start_soon(self.ownership_handoff.run)
            nursery.start_soon(self.repair.run)
            nursery.start_soon(self.transfers.run)
            nursery.start_soon(self.reaper.run)
            task_status.started()
            await trio.sleep_forever()

    # --- what the background work sees (ReplicaStore) ------------------------------------------

    @property
    def changes(self) -> int:
        """Clocks stored here that differed from what was held (a change mark)."""
        return self.replica.changes

    @property
    def on_change(self) -> Callable[[str, Clock], None] | None:
        """The State Watch hook: called with every changed clock this replica stores."""
        return self.replica.on_change

    @on_change.setter
    def on_change(self, hook: Callable[[str, Clock], None] | None) -> None:
        self.replica.on_change = hook

    def table(self) -> PartitionTable | None:
        """The newest partition table this peer accepted."""
        return self._table()

    def reachable(self) -> set[str]:
        """The members this peer can send to now (itself included)."""
        return self._reachable()

    async def send(self, member: str, message: Message) -> Message:
        """Send one request to ``member`` and return its answer (bounded by the caller)."""
        return await self._calls.send(member, message)

    def targets(self, key: str) -> tuple[list[Target], int]:
        """The sloppy preference list of ``key`` (see :meth:`ReplicaCalls.targets`)."""
        return self._calls.targets(key)

    async def read_replica(self, member: str, key: str) -> Clock | None:
        """``member``'s own clock of ``key`` (see :meth:`ReplicaCalls.read`)."""
        return await self._calls.read(member, key)

    async def write_replica(self, member: str, key: str, clock: Clock, hint_for: str) -> None:
        """Merge ``clock`` into ``member``'s copy (see :meth:`ReplicaCalls.write`)."""
        await self._calls.write(member, key, clock, hint_for)

    async def apply(self, key: str, clock: Clock, *, hint_for: str = "") -> None:
        """Merge ``clock`` into this replica (see :meth:`Replica.apply`)."""
        await self.replica.apply(key, clock, hint_for=hint_for)

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """This replica's lock of ``key`` (one read-modify-write at a time)."""
        return self.replica.lock(key)

    def count_error(self, exc: BaseException) -> None:
        self.replica.count_error(exc)

    # --- client operations ---------------------------------------------------------------------

    async def get(self, key: str, *, r: int = 0, local: bool = False) -> GetResult:
        """Read ``key`` from R replicas (see :meth:`Reads.get`)."""
        return await self._reads.get(key, r=r, local=local)

    def start_get(
        self,
        key: str,
        *,
        r: int = 0,
        on_result: Callable[[GetResult | GossipKVError], None] | None = None,
        reserved: int | None = None,
    ) -> Fanout | None:
        """Start a quorum read without waiting (see :meth:`Reads.start`)."""
        return self._reads.start(key, r=r, on_result=on_result, reserved=reserved)

    async def put(
        self,
        key: str,
        value: object,
        *,
        context: bytes | None = None,
        w: int = 0,
        client_id: str = "",
        seq: int = 0,
        delete: bool = False,
        forwarded: bool = False,
    ) -> PutResult:
        """Write ``value`` (or a tombstone) with the causal ``context`` of an earlier read
        (see :meth:`Writes.put`); a non-replica forwards to the first reachable replica."""
        return await self._writes.put(
            KvPut(key, value, context, w, client_id, seq, delete, forwarded)
        )

    def start_put(
        self, request: KvPut, on_result: Callable[[PutResult | GossipKVError], None]
    ) -> None:
        """Start a put without waiting for it (see :meth:`Writes.start`)."""
        self._writes.start(request, on_result)

    async def restore(self, key: str, raw: bytes) -> dict[str, object]:
        """Merge a whole clock into every owner of ``key`` (see :meth:`Writes.restore`)."""
        return await self._writes.restore(key, raw)

    async def handle(self, message: Message) -> Message:
        """Answer a data-path request from a client or a peer."""
        answer = await self.replica.serve(message)
        if answer is not None:
            return answer
        if isinstance(message, KvGet):
            got = await self.get(message.key, r=message.r, local=message.local)
            return KvResult(got.key, got.found, tuple(got.values), got.context, got.more)
        if isinstance(message, KvPut):
            put = await self._writes.put(message)
            return KvResult(put.key, bool(put.values), tuple(put.values), put.context, put.more)
        raise RemoteError("unsupported", f"unsupported request {message.TAG!r}")

    def handle_nowait(self, message: Message) -> Message | None:
        """Answer a replica request at once when that needs no waiting; else ``None`` (see
        :meth:`Replica.serve_nowait`)."""
        return self.replica.serve_nowait(message)

    # --- repair and transfers ------------------------------------------------------------------

    async def repair_key(self, key: str) -> bool:
        """Bring every reachable owner of ``key`` up to date (see :meth:`Reads.repair_key`)."""
        return await self._reads.repair_key(key)

    async def repair_partition(self, partition: int) -> dict[str, object]:
        """Anti-entropy of ``partition`` against every other reachable owner, now, repeated
        with each until their digests agree (``gossipkv repair``).

        Returns:
          ``{"partition", "compared", "keys_repaired", "unreachable"}``.

        Raises:
          ClusterNotReady: no table yet.
          RemoteError: ``bad_request`` for a partition out of range or not owned here.
        """
        table = self._table()
        if table is None or not table.owners:
            raise ClusterNotReady("the cluster has no partition table yet; retry shortly")
        if not 0 <= partition < table.q:
            raise InvalidArgument(f"partition {partition} is not in 0..{table.q - 1}")
        row = table.owners[partition]
        if self.node_id not in row:
            raise InvalidArgument(
                f"this peer does not own partition {partition} (its owners: {', '.join(row)})",
            )
        reachable = self._reachable()
        others = [o for o in row if o != self.node_id]
        repaired = 0
        compared = []
        for peer in (o for o in others if o in reachable):
            for _ in range(10_000):
                got = await self.anti_entropy.compare(peer, partition, table.q)
                repaired += got
                if got == 0:
                    break
            compared.append(peer)
        return {
            "partition": partition,
            "compared": compared,
            "keys_repaired": repaired,
            "unreachable": [o for o in others if o not in reachable],
        }

    async def store_page(self, items: list[tuple[str, bytes]]) -> int:
        """Store a transfer's page by ``sync`` (see :meth:`Replica.store_page`)."""
        return await self.replica.store_page(items)

    # --- hints ---------------------------------------------------------------------------------

    async def rewrite_hint(self, owner: str, key: str) -> None:
        """Keep a hint for ``owner`` again from this replica's own copy of ``key``."""
        await self.hinted.rewrite(owner, key)

    async def flush_hints(self) -> int:
        """Hand every pending hint to the reachable owners now (see
        :meth:`HintedHandoff.flush`); returns the hints still pending."""
        return await self.hinted.flush()

    def drop_pending_hints(self) -> None:
        """Forget every pending hint (the hint store was emptied)."""
        self.hinted.drop_pending()

    @property
    def hints_pending(self) -> int:
        return self.hinted.pending
