"""This peer's own copy of the data: what a replica does with the clocks it is sent and the writes
it coordinates.

A replica never overwrites: whatever arrives is merged by ``sync`` with what it holds, under one
lock per key (or at once, without the lock, when the engine never waits and nothing else is
writing the key). A write this peer coordinates is minted here: ``update(new(context, value),
local, actor)``, refused when it grows the key past a limit. Clocks travel between replicas as
canonical CBOR; each distinct small one is decoded once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from . import _codec, _dvv
from ._errors import (
    DecodeError,
    GossipKVError,
    InvalidClock,
    InvalidContext,
    RecordTooLarge,
    RemoteError,
    StorageError,
    TooManySiblings,
    error_code,
)
from ._kv_model import Clock, GetResult, KVCounters, encode_wire_clock, visible
from ._messages import Message, ReplicaGet, ReplicaPut, ReplicaState
from ._replica_store import KVConfig
from ._replication import PutPlan, resolve
from .storage import NOT_CACHED, StorageEngine, StorageLimits
from .storage._base import check_key

log = logging.getLogger("gossipkv.kv")

_DECODED_CACHE = 1024  # distinct wire clocks remembered decoded...
_DECODED_MAX_BYTES = 4096  # ...if small (the cache holds at most 4 MiB of keys)

#: Keeps a hint for an unreachable owner: ``(owner, key, clock)``.
KeepHint = Callable[[str, str, Clock | None], Awaitable[None]]


class Replica:
    """This peer's replica: its engine, the per-key locks, and the clocks it stores.

    Args:
      node_id: this peer's name (the actors of the writes it mints derive from it).
      storage: the replica's engine.
      config, limits: tuning and size limits.
      counters: the data path's counters (puts, deletes, contexts clamped, errors).
      refusals: where writes refused by a limit are counted (by wire error code).
      actor_seed: the incarnation of this peer's actors.
    """

    def __init__(
        self,
        *,
        node_id: str,
        storage: StorageEngine,
        config: KVConfig,
        limits: StorageLimits,
        counters: KVCounters,
        refusals: Counter[str],
        actor_seed: int,
    ) -> None:
        self.node_id = node_id
        self.storage = storage
        self.config = config
        self.limits = limits
        self.counters = counters
        self.refusals = refusals
        self._mint = _dvv.ActorMint(node_id, actor_seed)
        self._locks: dict[str, trio.Lock] = {}
        self._decoded: dict[bytes, Clock] = {}
        #: Clocks stored here that differed from what was held (ownership handoff's change mark).
        self.changes = 0
        #: Called (synchronously, under the key lock) with every clock this replica stores that
        #: differs from what it held: the State Watch hook. It must not block.
        self.on_change: Callable[[str, Clock], None] | None = None
        #: Called like ``on_change``, first: the tombstone reaper's note of what changed.
        self.on_stored: Callable[[str, Clock], None] = lambda key, clock: None
        #: Keeps a hint for an owner this replica stands in for (hinted handoff's store).
        self.keep_hint: KeepHint | None = None

    # --- requests from coordinators ------------------------------------------------------------

    async def serve(self, message: Message) -> Message | None:
        """Answer a :class:`ReplicaGet` or :class:`ReplicaPut`; ``None`` for anything else."""
        if isinstance(message, ReplicaGet):
            self.check_key(message.key)
            clock = await self.storage.get(message.key)
            return ReplicaState(None if clock is None else encode_wire_clock(clock))
        if isinstance(message, ReplicaPut):
            self.check_key(message.key)
            clock = self.clock_from_wire(message.clock)
            await self.apply(message.key, clock, hint_for=message.hint_for)
            return ReplicaState(None)
        return None

    def serve_nowait(self, message: Message) -> Message | None:
        """Answer a replica request at once when that needs no waiting (an engine with
        ``nowait``, no write in progress on the key, no hint to store); else ``None``."""
        if not self.storage.nowait:
            if isinstance(message, ReplicaGet):
                # A disk engine answers at once when the page cache holds the record.
                self.check_key(message.key)
                clock = self.storage.read_cached(message.key)
                if clock is NOT_CACHED:
                    return None
                return ReplicaState(None if clock is None else encode_wire_clock(clock))
            return None
        if isinstance(message, ReplicaGet):
            self.check_key(message.key)
            self.storage.get_nowait(message.key)  # counts the read, checks the engine is open
            found = self.storage.encoded_nowait(message.key)
            return ReplicaState(None if found is None else found[1])
        if isinstance(message, ReplicaPut):
            hinted = message.hint_for and message.hint_for != self.node_id
            if hinted or message.key in self._locks:
                return None
            self.check_key(message.key)
            clock = self.clock_from_wire(message.clock)
            local = self.storage.get_nowait(message.key)
            merged = self.synced(clock, local)
            if merged is not None:
                # Storing exactly what arrived (the usual case: a newer version): keep its bytes.
                same = merged is clock or _dvv.equal(merged, clock)
                encoded = message.clock if same else None
                self.storage.put_nowait(message.key, merged, encoded=encoded)
                self.changed(message.key, merged)
            return ReplicaState(None)
        return None

    # --- merging what arrives ------------------------------------------------------------------

    def synced(self, clock: Clock, local: Clock | None) -> Clock | None:
        """``sync`` of an incoming clock with the stored one, or ``None`` if nothing changes."""
        merged = self.resolve(clock if local is None else _dvv.sync(clock, local))
        _dvv.validate(merged, max_siblings=self.limits.max_stored_siblings)
        if local is not None and _dvv.equal(merged, local):
            return None
        return merged

    async def apply(self, key: str, clock: Clock, *, hint_for: str = "") -> None:
        """Store ``clock`` by ``sync`` with the local clock (never an overwrite, never a new dot)."""
        async with self.lock(key):
            local = await self.storage.get(key)
            merged = self.synced(clock, local)
            if merged is not None:
                await self.storage.put(key, merged)
                self.changed(key, merged)
            # The hint is written under the key lock too, so handoff never clears a newer one.
            if hint_for and hint_for != self.node_id and self.keep_hint is not None:
                await self.keep_hint(hint_for, key, merged if merged is not None else local)

    async def store_page(self, items: list[tuple[str, bytes]]) -> int:
        """Store clocks received in a transfer by ``sync`` (concurrently: a log engine commits
        them together). The whole page is checked before anything is stored.

        Returns:
          How many were stored (all of them).

        Raises:
          RemoteError: ``bad_reply`` when a key or clock of the page is invalid: nothing is
            stored, and the transfer asks again later instead of confirming a page it lost.
          GossipKVError: the first error storing a key (the others are stored; storing again
            is harmless, since ``sync`` of a clock already held changes nothing).
        """
        checked: list[tuple[str, Clock]] = []
        for key, raw in items:
            try:
                self.check_key(key)
                checked.append((key, self.clock_from_wire(raw)))
            except GossipKVError as exc:
                self.count_error(exc)
                raise RemoteError("bad_reply", f"invalid item {str(key)[:64]!r}: {exc}") from exc
        failed: list[GossipKVError] = []

        async def one(key: str, clock: Clock) -> None:
            try:
                await self.apply(key, clock)
            except GossipKVError as exc:
                self.count_error(exc)
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            for key, clock in checked:
                nursery.start_soon(one, key, clock)
        if failed:
            raise failed[0]
        return len(checked)

    async def clock_bytes(self, keys: list[str]) -> list[bytes | None]:
        """The canonical clock bytes of ``keys`` as stored here (``None``: gone since)."""
        if self.storage.nowait:
            found = [self.storage.encoded_nowait(k) for k in keys]
            return [None if f is None else f[1] for f in found]
        clocks: list[Clock | None] = [None] * len(keys)

        async def one(i: int, key: str) -> None:
            clocks[i] = await self.storage.get(key)

        async with trio.open_nursery() as nursery:
            for i, key in enumerate(keys):
                nursery.start_soon(one, i, key)
        return [None if c is None else encode_wire_clock(c) for c in clocks]

    # --- writes coordinated here ---------------------------------------------------------------

    def can_store_now(self, plan: PutPlan) -> bool:
        """Whether ``plan`` can be stored without waiting (see :meth:`store_now`)."""
        return self.storage.nowait and plan.key not in self._locks and not plan.hint_for

    def store_now(self, plan: PutPlan) -> Clock | None:
        """Store without the lock: nothing waits between reading and writing, so it is atomic.

        Returns ``None`` (having done nothing) when the context claims dots this replica does
        not hold: the caller then catches up with the other replicas first, in a task."""
        local = self.storage.get_nowait(plan.key)
        if not _dvv.context_within(plan.ctx, local):
            return None
        self.count_put(plan)
        clock = self.update(plan, local)
        self.storage.put_nowait(plan.key, clock)
        self.changed(plan.key, clock)
        return clock

    def count_put(self, plan: PutPlan) -> None:
        if plan.sibling.tombstone:
            self.counters.deletes += 1
        else:
            self.counters.puts += 1

    def update(self, plan: PutPlan, local: Clock | None) -> Clock:
        """The clock a put stores: ``update`` with the context clamped to what this replica
        knows, refused (changing nothing) if it breaks a per-key limit.

        A write is refused only when it grows the key past a limit: merged replica state may
        exceed the limits (see :class:`StorageLimits`), and a write that resolves part of it
        must still go through.

        Raises:
          TooManySiblings: more than ``max_siblings`` values, and more than before.
          RecordTooLarge: an encoded clock over ``max_record_bytes``, and larger than before.
          InvalidContext: an event counter is exhausted (only a forged clock gets there).
        """
        ctx = _dvv.clamp_context(plan.ctx, local)
        if ctx != plan.ctx:
            self.counters.contexts_clamped += 1
        if self.config.last_write_wins and local is not None:
            ctx = _dvv.join(local)  # replace whatever is stored, seen or not (lossy)
        try:
            clock = _dvv.update(_dvv.new(ctx, plan.sibling), local, self._mint.actor_for(local))
            count = _dvv.size(clock)
            if count > self.limits.max_siblings and count > (
                0 if local is None else _dvv.size(local)
            ):
                raise TooManySiblings(count, self.limits.max_siblings)
            self._check_record_size(plan, clock)
        except InvalidClock as exc:
            error = exc if isinstance(exc, TooManySiblings) else InvalidContext(str(exc))
            self.refusals[error_code(error)] += 1
            raise error from None
        except RecordTooLarge as exc:
            self.refusals[error_code(exc)] += 1
            raise
        return clock

    def _check_record_size(self, plan: PutPlan, clock: Clock) -> None:
        # The stored size plus the new value bounds the new clock's size (the value's dot and
        # metadata add little): encode it only when that bound is over the limit.
        limit = self.limits.max_record_bytes
        before = self.storage.stored_bytes(plan.key) or 0
        if before + plan.size + 512 <= limit:
            return
        size = len(encode_wire_clock(clock))
        if size > limit and size > before:
            raise RecordTooLarge(
                f"{plan.key!r} would hold {size} bytes (every sibling and its history); the "
                f"limit is {limit}: resolve its siblings with a context put"
            )

    # --- shared helpers ------------------------------------------------------------------------

    def resolve(self, clock: Clock) -> Clock:
        return resolve(clock, last_write_wins=self.config.last_write_wins)

    def clock_from_wire(self, raw: bytes) -> Clock:
        """Decode a clock as replicas send it (checked against the limits).

        Raises:
          RemoteError: ``invalid_clock``.
        """
        # Replicas of a key usually send the very same bytes (and a hot key's version is read
        # many times): decode each distinct clock once. Clocks are immutable, so sharing is safe.
        clock = self._decoded.get(raw)
        if clock is not None:
            return clock
        try:
            plain = _codec.loads_value(raw, max_depth=self.limits.max_clock_depth)
            clock = _dvv.clock_from_plain(plain, max_siblings=self.limits.max_stored_siblings)
        except (DecodeError, InvalidClock) as exc:
            raise RemoteError("invalid_clock", str(exc)) from exc
        if len(raw) <= _DECODED_MAX_BYTES:
            if len(self._decoded) >= _DECODED_CACHE:
                del self._decoded[next(iter(self._decoded))]
            self._decoded[raw] = clock
        return clock

    def encoded(self, key: str, clock: Clock) -> bytes:
        """``clock`` as canonical CBOR: the bytes an in-memory replica already keeps for it
        when it is the stored clock, else freshly encoded."""
        if self.storage.nowait:
            found = self.storage.encoded_nowait(key)
            if found is not None and found[0] is clock:
                return found[1]
        return encode_wire_clock(clock)

    def result(self, key: str, clock: Clock | None) -> GetResult:
        if clock is None:
            return GetResult(key, False, [], b"")
        values, context, more = visible(clock, self.limits)
        return GetResult(key, bool(values), values, context, more)

    def check_key(self, key: object) -> None:
        check_key(key, self.limits)

    def changed(self, key: str, clock: Clock) -> None:
        self.changes += 1
        self.on_stored(key, clock)
        if self.on_change is not None:
            self.on_change(key, clock)

    def count_error(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self.counters.errors[kind] = self.counters.errors.get(kind, 0) + 1
        if isinstance(exc, StorageError):
            log.error("storage error: %s", exc)

    def locked(self, key: str) -> bool:
        """Whether a write to ``key`` holds (or waits for) its lock."""
        return key in self._locks

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        # One read-modify-write per key at a time on this replica, or two puts could mint on the
        # same base and one would silently lose the other's dot.
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)
