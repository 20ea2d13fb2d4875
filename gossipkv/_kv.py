"""The replicated key-value path: quorum reads and writes, read repair, hinted handoff.

Patterns: Quorum (R/W of N over the partition's preference list, sloppy: an unreachable owner is
stood in for by the next reachable member, which keeps a durable hint), Versioned Value / Version
Vector (every key is a DVVSet; a put is ``update(new(context, value), local, actor)`` at a replica
of the key, every other replica ``sync``s), Request Waiting List (replies collected per request),
Idempotent Receiver (a retried client request returns the first result).

The service never waits on the leader: it routes by the newest partition table this peer accepted.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import trio

from . import _codec, _dvv
from ._admission import ByteBudget
from ._antientropy import AntiEntropy
from ._dvv import DVVSet, Sibling
from ._errors import (
    ClusterNotReady,
    DecodeError,
    GossipKVError,
    InvalidArgument,
    InvalidClock,
    InvalidContext,
    InvalidKey,
    RecordTooLarge,
    RemoteError,
    StorageError,
    TooManySiblings,
    TransportError,
    Unavailable,
    ValueNotEncodable,
    ValueTooLarge,
    error_code,
)
from ._handoff import OwnershipHandoff
from ._hints import HintedHandoff
from ._histogram import LatencyHistogram
from ._messages import (
    KvGet,
    KvPut,
    KvResult,
    Message,
    PartitionFetch,
    PartitionItems,
    ReplicaGet,
    ReplicaPut,
    ReplicaState,
    encoded_size,
)
from ._partitions import PartitionTable
from ._reaper import TombstoneReaper
from ._repair import QuarantineRepair
from ._replica_store import KVConfig
from ._replication import (
    Progress,
    PutPlan,
    Tally,
    Target,
    plan_put,
    preference_list,
    quorum_size,
    read_plan,
    read_result,
    resolve,
    stale_replicas,
    write_acks,
)
from ._transfer import Transfers, TransferSource
from .storage import DEFAULT_LIMITS, StorageEngine, StorageLimits
from .storage._base import check_value, encode_key

log = logging.getLogger("gossipkv.kv")

Clock = DVVSet[Sibling]
SendRequest = Callable[[str, Message], Awaitable[Message]]
ReplyCallback = Callable[[Message | BaseException], None]
#: Starts a request to a member over an already open connection without waiting: returns a
#: function that forgets it, or ``None`` when there is no open connection (the caller then
#: falls back to ``SendRequest`` in a task). The callback gets the reply or the exception.
StartRequest = Callable[[str, Message, ReplyCallback], Callable[[], None] | None]

_R = TypeVar("_R")
_DECODED_CACHE = 1024  # distinct wire clocks remembered decoded...
_DECODED_MAX_BYTES = 4096  # ...if small (the cache holds at most 4 MiB of keys)


@dataclass(frozen=True, slots=True)
class GetResult:
    """A read: the live siblings (tombstones hidden) and the context covering what was read.

    ``found`` is False when no live value exists; ``context`` is still meaningful then (a put with
    it supersedes the tombstone instead of siblinging with it).

    Attributes:
      key: the key read.
      found: whether any live value exists.
      values: the live siblings, more than one after concurrent writes; resolve them and write
        the result back with ``context``.
      context: opaque bytes (canonical CBOR of the causal context); ``b""`` when the key was
        never written.
      more: siblings stored but not returned, because the key holds more than a read returns
        (``StorageLimits.max_siblings`` values or ``max_record_bytes`` bytes). ``context``
        covers exactly ``values``: write their resolution with it and read again to see the
        rest. 0 almost always.
    """

    key: str
    found: bool
    values: list[object]
    context: bytes
    more: int = 0


@dataclass(frozen=True, slots=True)
class PutResult:
    """A write's outcome: the siblings now stored at the coordinating replica and their context.

    Attributes:
      key: the key written.
      values: the live siblings stored now: the written value, plus any concurrent ones its
        context did not cover (empty after a delete that covered them all).
      context: the context covering them, for the next write of ``key``.
      more: siblings stored but not returned (see :attr:`GetResult.more`).
    """

    key: str
    values: list[object]
    context: bytes
    more: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """A change this peer's replica stored for ``key`` (State Watch).

    Two replicas storing the same state report the same ``context``; :meth:`Client.watch` uses
    that to deliver each change once.

    Attributes:
      key: the key that changed.
      values: the live siblings now stored (tombstones hidden, so a delete shows as no values).
      context: the context covering them (as in :class:`GetResult`).
      more: siblings stored but not shown (see :attr:`GetResult.more`).
    """

    key: str
    values: list[object]
    context: bytes
    more: int = 0


def _cost(sibling: Sibling) -> int:
    """What a sibling costs a read: its value's encoded size (a tombstone costs nothing)."""
    return 0 if sibling.tombstone else max(1, encoded_size(sibling.data))


def visible(clock: Clock, limits: StorageLimits) -> tuple[list[object], bytes, int]:
    """What a read of ``clock`` returns: the live values, their exact context, and how many
    stored values it leaves out (at most ``max_siblings`` values and ``max_record_bytes`` bytes
    are shown; see :func:`gossipkv._dvv.view`)."""
    shown, more = _dvv.view(clock, limits.max_siblings, limits.max_record_bytes, _cost)
    return live_values(shown), encode_context(shown), more


def change_of(key: str, clock: Clock, limits: StorageLimits) -> Change:
    values, context, more = visible(clock, limits)
    return Change(key, values, context, more)


@dataclass(slots=True)
class KVCounters:
    gets: int = 0
    puts: int = 0
    deletes: int = 0
    forwarded: int = 0
    #: Puts checked and routed (each request once at each peer it reaches).
    put_plans: int = 0
    read_repairs: int = 0
    read_repairs_skipped: int = 0
    hints_stored: int = 0
    hints_delivered: int = 0
    hints_expired: int = 0
    idempotent_hits: int = 0
    siblings_seen: int = 0
    contexts_clamped: int = 0
    context_catch_ups: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: Latencies of coordinated reads and writes and of replica answers (issue 16).
    get_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    put_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    replica_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


def encode_context(clock: Clock) -> bytes:
    """The opaque context handed to clients: canonical CBOR of ``join(clock)``."""
    return _codec.dumps_canonical(_dvv.context_to_plain(_dvv.join(clock)))


def encode_wire_clock(clock: Clock) -> bytes:
    """A clock as it travels between replicas: canonical CBOR of its plain form."""
    return _codec.dumps_canonical(_dvv.clock_to_plain(clock))


def decode_context(
    raw: bytes | None, limits: StorageLimits = DEFAULT_LIMITS
) -> dict[str, int] | None:
    """The causal context a client sent, checked (its claims are clamped later, against the
    replica's clock: see :func:`gossipkv._dvv.clamp_context`).

    Raises:
      InvalidContext: larger than ``limits.max_context_bytes`` or not a gossipkv context.
    """
    if raw is None or raw == b"":
        return None
    if not isinstance(raw, bytes):
        raise InvalidContext(f"malformed context: bytes expected, got {type(raw).__name__}")
    if len(raw) > limits.max_context_bytes:
        raise InvalidContext(
            f"context of {len(raw)} bytes exceeds the {limits.max_context_bytes}-byte limit"
        )
    try:
        return _dvv.context_from_plain(_codec.loads_value(raw, max_depth=2))
    except (DecodeError, InvalidClock) as exc:
        raise InvalidContext(f"malformed context: {exc}") from exc


def check_request(key: object, context: object = None) -> None:
    """The type checks a :class:`~gossipkv.Client` makes before sending, with the errors a
    :class:`~gossipkv.Node` raises for the same call (the peer checks lengths and contents)."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"a key must be a non-empty string, got {type(key).__name__}")
    if context is not None and not isinstance(context, bytes):
        raise InvalidContext(f"malformed context: bytes expected, got {type(context).__name__}")


class _Fanout:
    """The runtime around one request's :class:`~gossipkv._replication.Tally`: the events a
    waiting task needs, the callbacks the fast path needs, the cancels of requests still out,
    the deadline and the memory reservation.

    ``enough`` is set (and ``on_enough`` runs, once) when the tally has enough answers or every
    replica answered or failed, so an error can say how many did; ``done`` is set (and
    ``on_done`` runs) once every replica answered or failed. Whatever has not answered by
    ``deadline`` fails then (the service's expiry task calls :meth:`expire`). Call :meth:`check`
    after starting every request: with ``need`` 0 or no replicas at all, that is when it fires.
    """

    __slots__ = (
        "__weakref__",
        "_done_event",
        "_enough_event",
        "cancels",
        "deadline",
        "on_done",
        "on_enough",
        "on_reply",
        "release",
        "started",
        "tally",
    )

    def __init__(
        self,
        members: list[str],
        need: int,
        deadline: float,
        *,
        counted: set[str] | None = None,
        on_enough: Callable[[_Fanout], None] | None = None,
        on_done: Callable[[_Fanout], None] | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.tally = Tally(members, need, counted)
        self.deadline = deadline
        # Events only for a task that waits (callers that pass callbacks never need one).
        self._enough_event: trio.Event | None = None
        self._done_event: trio.Event | None = None
        self.cancels: dict[str, Callable[[], None]] = {}
        self.on_enough = on_enough
        self.on_done = on_done
        #: Called with each replica's answer (the replica latency histogram).
        self.on_reply: Callable[[_Fanout, str], None] | None = None
        self.started = trio.current_time()
        #: Gives back the fan-out's memory reservation, once, when every replica answered.
        self.release = release

    @property
    def replies(self) -> dict[str, Clock | None]:
        return self.tally.replies

    @property
    def done(self) -> bool:
        return self.tally.done

    def answered(self, member: str, clock: Clock | None) -> None:
        if member not in self.tally.pending:
            return  # not asked, answered already, or given up on
        self.cancels.pop(member, None)
        progress = self.tally.answered(member, clock)
        if self.on_reply is not None:
            self.on_reply(self, member)
        self._fire(progress)

    def failed(self, member: str) -> None:
        self.cancels.pop(member, None)
        self._fire(self.tally.failed(member))

    def expire(self) -> None:
        """Give up on every replica that has not answered yet."""
        for cancel in list(self.cancels.values()):
            cancel()
        for member in list(self.tally.pending):
            self.failed(member)

    async def wait_enough(self) -> None:
        if self.tally.enough:
            await trio.lowlevel.checkpoint()
            return
        self._enough_event = self._enough_event or trio.Event()
        await self._enough_event.wait()

    async def wait_done(self) -> None:
        if self.tally.done:
            await trio.lowlevel.checkpoint()
            return
        self._done_event = self._done_event or trio.Event()
        await self._done_event.wait()

    def check(self) -> None:
        self._fire(self.tally.check())

    def _fire(self, progress: Progress) -> None:
        if Progress.ENOUGH in progress:
            if self._enough_event is not None:
                self._enough_event.set()
            if self.on_enough is not None:
                self.on_enough(self)
        if Progress.DONE in progress:
            if self._done_event is not None:
                self._done_event.set()
            release, self.release = self.release, None
            if release is not None:
                release()
            if self.on_done is not None:
                self.on_done(self)


def _deliver(
    outcome: Callable[[_Fanout], _R],
    on_result: Callable[[_R | GossipKVError], None],
    fan: _Fanout,
) -> None:
    """Hand a finished fan-out's result (or its typed error) to a caller's callback."""
    try:
        result: _R | GossipKVError = outcome(fan)
    except GossipKVError as exc:
        result = exc
    on_result(result)


def live_values(clock: Clock) -> list[object]:
    """The client-visible siblings: tombstones hidden, retried writes (same request id) once."""
    out: list[object] = []
    seen_rids: set[str] = set()
    for sib in _dvv.values(clock):
        if sib.tombstone:
            continue
        rid = sib.meta.get("rid")
        if isinstance(rid, str) and rid:
            if rid in seen_rids:
                continue
            seen_rids.add(rid)
        out.append(sib.data)
    return out


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
        self._pulling = pulling if pulling is not None else (lambda partition: set())
        self._send = send
        self._start = start if start is not None else (lambda member, message, callback: None)
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
        self._stamp = stamp if stamp is not None else (lambda: self._wall_ms() << 16)
        self._mint = _dvv.ActorMint(node_id, rng.getrandbits(63))
        self._locks: dict[str, trio.Lock] = {}
        self._results: OrderedDict[str, PutResult] = OrderedDict()
        self._repairs = trio.Semaphore(config.max_pending_repairs)
        #: The memory budget of coordinated reads and writes (see ``KVConfig``).
        self.admission = ByteBudget(config.max_inflight_bytes, queued_bytes)
        # Fan-outs to expire, oldest first, held weakly: a finished one (and the clocks it
        # collected) is freed as soon as its caller is done with it, not at its deadline.
        self._expiring: deque[tuple[float, weakref.ref[_Fanout]]] = deque()
        self._decoded: dict[bytes, Clock] = {}
        self._expiry_lot = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        #: Called (synchronously, under the key lock) with every clock this replica stores that
        #: differs from what it held: the State Watch hook. It must not block.
        self.on_change: Callable[[str, Clock], None] | None = None
        #: Background anti-entropy (started by :meth:`run`), with its own randomness stream.
        background_seed = rng.getrandbits(64)
        self.anti_entropy = AntiEntropy(self, random.Random(background_seed))
        #: Background ownership handoff (started by :meth:`run`), with its own randomness stream
        #: (derived, so the draws from ``rng`` stay what they were before handoff existed).
        self.ownership_handoff = OwnershipHandoff(
            self, random.Random(background_seed ^ 0x5A5A), self.anti_entropy.trees
        )
        #: Clocks stored here that differed from what was held (ownership handoff's change mark).
        self.changes = 0
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
        #: Pulls what a table change moved to this peer, from the members that held it.
        self.transfers = Transfers(
            node_id=node_id,
            table=table,
            known=known_table,
            reachable=reachable,
            removed=gone if gone is not None else (lambda member: False),
            fetch=self._fetch_partition,
            store=self.store_page,
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
            table=table, keys=storage.keys, clocks=self._clock_bytes
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
            self._nursery = nursery
            nursery.start_soon(self.hinted.run)
            nursery.start_soon(self._expire_loop)
            nursery.start_soon(self.anti_entropy.run)
            nursery.start_soon(self.ownership_handoff.run)
            nursery.start_soon(self.repair.run)
            nursery.start_soon(self.transfers.run)
            nursery.start_soon(self.reaper.run)
            task_status.started()
            await trio.sleep_forever()

    # --- routing -------------------------------------------------------------------------------

    def table(self) -> PartitionTable | None:
        """The newest partition table this peer accepted."""
        return self._table()

    def reachable(self) -> set[str]:
        """The members this peer can send to now (itself included)."""
        return self._reachable()

    async def send(self, member: str, message: Message) -> Message:
        """Send one request to ``member`` and return its answer (bounded by the caller)."""
        return await self._send(member, message)

    def targets(self, key: str) -> tuple[list[Target], int]:
        """The sloppy preference list of ``key`` as this peer sees it now (see
        :func:`~gossipkv._replication.preference_list`).

        Raises:
          ClusterNotReady: no partition table yet.
        """
        return preference_list(
            self._table(), key, self._reachable(), sloppy=self.config.sloppy_quorum
        )

    # --- client operations ---------------------------------------------------------------------

    async def get(self, key: str, *, r: int = 0, local: bool = False) -> GetResult:
        """Read ``key`` from R replicas (or only this peer's own replica with ``local``).

        Raises:
          ClusterNotReady, QuorumNotReached, StorageError, KeyTooLarge, InvalidKey.
        """
        self._check_key(key)
        if local:
            self.counters.gets += 1
            return self._result(key, await self.storage.get(key))
        reserved = self._estimate(key, 0)
        await self.admission.acquire(reserved)
        fan = self.start_get(key, r=r, reserved=reserved)
        assert fan is not None  # reserved already
        await fan.wait_enough()
        result = self._get_outcome(key, fan)
        if self.config.blocking_read_repair:
            await fan.wait_done()
            await self._repair(key, fan.replies)
        return result

    def start_get(
        self,
        key: str,
        *,
        r: int = 0,
        on_result: Callable[[GetResult | GossipKVError], None] | None = None,
        reserved: int | None = None,
    ) -> _Fanout | None:
        """Start a quorum read without waiting: ask every replica of the preference list.

        ``on_result`` is called once, when R replicas answered (or all did), with the result or
        the error; it runs in whichever task delivers that answer and must not block.
        ``reserved`` is a memory reservation the caller already holds (it passes to the read);
        without one the read reserves its own, and returns ``None`` (having done nothing) when
        the budget has no room: wait for room with :meth:`get` instead.

        Raises:
          ClusterNotReady, QuorumNotReached, KeyTooLarge, InvalidKey, ValueError: at once.
        """
        try:
            self._check_key(key)
            targets, n = self.targets(key)
            need = quorum_size(r, n, "r", self.config.r)
            table = self._table()
            filling = self._pulling(_dvv.partition_of(key, table.q)) if table else set()
            asked, counted = read_plan(targets, need, filling)
        except BaseException:
            if reserved is not None:
                self.admission.release(reserved)
            raise
        if reserved is None:
            reserved = self._estimate(key, 0)
            if not self.admission.try_acquire(reserved):
                return None
        self.counters.gets += 1
        fan = _Fanout(
            asked,
            need,
            trio.current_time() + self.config.replica_timeout,
            counted=counted,
            on_enough=None
            if on_result is None
            else partial(_deliver, partial(self._get_outcome, key), on_result),
            on_done=None
            if self.config.blocking_read_repair
            else partial(self._repair_if_stale, key),
            release=partial(self.admission.release, reserved),
        )
        fan.on_reply = self._replica_answered
        self._track(fan)
        for member in asked:
            if member == self.node_id and self.storage.nowait:
                try:
                    fan.answered(member, self.storage.get_nowait(key))
                except GossipKVError as exc:
                    self.count_error(exc)
                    fan.failed(member)
            elif member == self.node_id or not self._start_replica(
                fan, member, ReplicaGet(key), self._on_get_reply
            ):
                self._nursery_or_fail().start_soon(self._ask, fan, member, key)
        fan.check()
        return fan

    def _get_outcome(self, key: str, fan: _Fanout) -> GetResult:
        clock = read_result(fan.tally, last_write_wins=self.config.last_write_wins)
        result = self._result(key, clock)
        self.counters.get_latency.observe(trio.current_time() - fan.started)
        return result

    def _replica_answered(self, fan: _Fanout, member: str) -> None:
        if member != self.node_id:
            self.counters.replica_latency.observe(trio.current_time() - fan.started)

    def _track(self, fan: _Fanout) -> None:
        self._expiring.append((fan.deadline, weakref.ref(fan)))
        if len(self._expiring) == 1:
            self._expiry_lot.unpark()

    async def _expire_loop(self) -> None:
        """Fail the replicas of fan-outs that did not answer by their deadline.

        Deadlines only grow (one timeout for all), so the oldest fan-out is due first; waking
        a little after it (an eighth of the timeout) expires many in one go.
        """
        slack = self.config.replica_timeout / 8
        expiring = self._expiring
        while True:
            if not expiring:
                await self._expiry_lot.park()
                continue
            deadline, ref = expiring[0]
            head = ref()
            if head is not None and not head.done:
                del head
                await trio.sleep_until(deadline + slack)
            now = trio.current_time()
            while expiring:
                deadline, ref = expiring[0]
                fan = ref()
                if fan is not None and not fan.done and deadline > now:
                    break
                expiring.popleft()
                if fan is None or fan.done:
                    continue
                try:
                    fan.expire()
                except Exception:
                    # A bug in a completion callback must not stop expiry (or the peer).
                    log.exception("completing an expired request failed")
                del fan

    def _start_replica(
        self,
        fan: _Fanout,
        member: str,
        message: Message,
        on_reply: Callable[[_Fanout, str, Message | BaseException], None],
    ) -> bool:
        cancel = self._start(member, message, partial(on_reply, fan, member))
        if cancel is None:
            return False
        fan.cancels[member] = cancel
        return True

    def _on_get_reply(self, fan: _Fanout, member: str, reply: Message | BaseException) -> None:
        try:
            fan.answered(member, self._clock_of_reply(member, reply))
        except GossipKVError as exc:
            self.count_error(exc)
            fan.failed(member)

    def _on_put_reply(self, fan: _Fanout, member: str, reply: Message | BaseException) -> None:
        try:
            self._clock_of_reply(member, reply)
        except GossipKVError as exc:
            self.count_error(exc)
            fan.failed(member)
        else:
            fan.answered(member, None)

    def _clock_of_reply(self, member: str, reply: Message | BaseException) -> Clock | None:
        if isinstance(reply, BaseException):
            raise reply
        if not isinstance(reply, ReplicaState):
            raise Unavailable(f"unexpected reply {reply.TAG} from {member}")
        return None if reply.clock is None else self._clock_from_wire(reply.clock)

    async def _ask(self, fan: _Fanout, member: str, key: str) -> None:
        try:
            clock = await self._replica_get(member, key)
        except GossipKVError as exc:
            self.count_error(exc)
            fan.failed(member)
        else:
            fan.answered(member, clock)

    def _stale(self, replies: dict[str, Clock | None]) -> tuple[Clock | None, list[str]]:
        return stale_replicas(replies, last_write_wins=self.config.last_write_wins)

    def _repair_if_stale(self, key: str, fan: _Fanout) -> None:
        """Called once every replica of a read answered (or timed out): repair the stale ones."""
        final, stale = self._stale(fan.replies)
        if final is None or not stale or self._nursery is None:
            return
        try:
            self._repairs.acquire_nowait()
        except trio.WouldBlock:
            self.counters.read_repairs_skipped += 1
            return
        self._nursery.start_soon(self._release_after, self._repair_members(key, final, stale))

    async def _release_after(self, work: Awaitable[None]) -> None:
        try:
            await work
        finally:
            self._repairs.release()

    async def _repair(self, key: str, replies: dict[str, Clock | None]) -> None:
        final, stale = self._stale(replies)
        if final is not None and stale:
            await self._repair_members(key, final, stale)

    async def _repair_members(self, key: str, final: Clock, stale: list[str]) -> None:
        async with trio.open_nursery() as nursery:
            for member in stale:
                nursery.start_soon(self._repair_one, member, key, final)

    async def _repair_one(self, member: str, key: str, clock: Clock) -> None:
        try:
            await self.write_replica(member, key, clock, "")
            self.counters.read_repairs += 1
        except GossipKVError as exc:
            self.count_error(exc)

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
        """Write ``value`` (or a tombstone) with the causal ``context`` of an earlier read.

        Executed by a replica of the key: a non-replica forwards to the first reachable one.

        Raises:
          ClusterNotReady, QuorumNotReached, Unavailable, TooManySiblings, ValueTooLarge,
          InvalidContext, StorageError.
        """
        request = KvPut(key, value, context, w, client_id, seq, delete, forwarded)
        plan = self._plan_put(request)
        if isinstance(plan, PutResult):
            return plan
        return await self._put_planned(plan)

    async def _put_planned(self, plan: PutPlan) -> PutResult:
        """Carry out a planned put: forward it, or store it and wait for W copies."""
        reserved = self._estimate(plan.key, plan.size)
        await self.admission.acquire(reserved)
        if plan.forward_to:
            try:
                return await self._forward(plan)
            finally:
                self.admission.release(reserved)
        try:
            clock, fan = await self._store_and_replicate(plan, reserved)
        except BaseException:
            self.admission.release(reserved)
            raise
        await fan.wait_enough()
        return self._put_outcome(plan, clock, fan)

    async def _forward(self, plan: PutPlan) -> PutResult:
        """Hand a put to a replica of its key (this peer is none): the first reachable one, and
        the next when it cannot be reached (a dead owner not yet detected) or answers that it
        reaches no replica, within the same request.

        Raises:
          Unavailable: no replica took the write.
          QuorumNotReached, and the other errors of :meth:`put`: as the replica reported them.
        """
        self.counters.forwarded += 1
        key = plan.key
        message = dataclasses.replace(plan.request, forwarded=True)
        failures: list[str] = []
        for target in [m for m, _ in plan.targets if m != self.node_id]:
            # The replica itself waits up to a replica timeout for its acks: allow that and more.
            with trio.move_on_after(self.config.replica_timeout * 3):
                try:
                    reply = await self._send(target, message)
                except (TransportError, Unavailable) as exc:
                    failures.append(f"{target}: {exc}")
                    continue
                if not isinstance(reply, KvResult):
                    raise Unavailable(f"unexpected reply {reply.TAG} from {target}")
                return PutResult(reply.key, list(reply.values), reply.context, reply.more)
            failures.append(f"{target}: no answer in time")
        raise Unavailable(f"no replica of {key!r} took the write: {'; '.join(failures)}")

    async def _store_and_replicate(self, plan: PutPlan, reserved: int) -> tuple[Clock, _Fanout]:
        """Store a put here and start replicating it (the fan-out keeps ``reserved``)."""
        key = plan.key
        stored = self._store_now(plan) if self._can_store_now(plan) else None
        if stored is None:
            self._count_put(plan)
            async with self.lock(key):
                local = await self.storage.get(key)
                if not _dvv.context_within(plan.ctx, local):
                    local = await self._catch_up(key, local)
                stored = self._update(plan, local)
                await self.storage.put(key, stored)
                self._changed(key, stored)
                if plan.hint_for:
                    await self.hinted.store(plan.hint_for, key, stored)
        return stored, self._replicate(plan, stored, reserved)

    def start_put(
        self, request: KvPut, on_result: Callable[[PutResult | GossipKVError], None]
    ) -> None:
        """Start a put without waiting for it; ``on_result`` is called once, when W copies are
        stored (or every replica answered), with the result or the error, and must not block.

        The put is planned (checked, its replicas chosen) once. When nothing needs to wait
        (this peer is a replica with an engine that never waits, no write to the key is in
        progress, no hint is needed and the memory budget has room) it is stored at once and its
        replies are gathered by callbacks; otherwise the same plan goes on in a task.

        Raises:
          the argument errors of :meth:`put`, at once.
        """
        plan = self._plan_put(request)
        if isinstance(plan, PutResult):
            on_result(plan)
            return
        if not plan.forward_to and self._can_store_now(plan):
            reserved = self._estimate(plan.key, plan.size)
            if self.admission.try_acquire(reserved):
                try:
                    clock = self._store_now(plan)
                except BaseException:
                    self.admission.release(reserved)
                    raise
                if clock is not None:
                    self._replicate(
                        plan,
                        clock,
                        reserved,
                        partial(_deliver, partial(self._put_outcome, plan, clock), on_result),
                    )
                    return
                self.admission.release(reserved)
        self._nursery_or_fail().start_soon(self._finish_put, plan, on_result)

    async def _finish_put(
        self, plan: PutPlan, on_result: Callable[[PutResult | GossipKVError], None]
    ) -> None:
        try:
            result: PutResult | GossipKVError = await self._put_planned(plan)
        except GossipKVError as exc:
            result = exc
        except Exception as exc:
            # A bug answers one request with an error; it never takes the data path down.
            log.error("put of %r failed", plan.key, exc_info=exc)
            result = RemoteError("internal", f"internal error: {exc!r}")
        on_result(result)

    def _estimate(self, key: str, written: int) -> int:
        """The bytes a coordinated read or write of ``key`` holds until its replicas answered:
        a copy of the key per replica and one for the reply (what this replica stores tells
        its size), plus the value written; twice that, because each copy that arrives exists
        as received bytes and as a decoded clock for a while."""
        table = self._table()
        copies = (table.n if table is not None else 3) + 1
        return 2 * copies * (max(self.storage.stored_bytes(key) or 0, 1024) + written)

    def _plan_put(self, request: KvPut) -> PutPlan | PutResult:
        """Check a put and decide where it runs; a retried request gets its first result."""
        self.counters.put_plans += 1
        key = request.key
        try:
            self._check_key(key)
            ctx = decode_context(request.context, self.limits)
            size = 0 if request.delete else check_value(request.value, self.limits)
        except (InvalidKey, InvalidContext, ValueTooLarge, ValueNotEncodable) as exc:
            self.refusals[error_code(exc)] += 1
            raise
        rid = f"{request.client_id}:{request.seq}" if request.client_id else ""
        if rid and rid in self._results:
            self.counters.idempotent_hits += 1
            self._results.move_to_end(rid)
            return self._results[rid]
        targets, n = self.targets(key)
        stamped = self.config.last_write_wins or request.delete
        return plan_put(
            request,
            node_id=self.node_id,
            ctx=ctx,
            size=size,
            targets=targets,
            n=n,
            default_w=self.config.w,
            stamp=self._stamp if stamped else None,
            started=trio.current_time(),
        )

    def _can_store_now(self, plan: PutPlan) -> bool:
        return self.storage.nowait and plan.key not in self._locks and not plan.hint_for

    def _store_now(self, plan: PutPlan) -> Clock | None:
        """Store without the lock: nothing waits between reading and writing, so it is atomic.

        Returns ``None`` (having done nothing) when the context claims dots this replica does
        not hold: the caller then catches up with the other replicas first, in a task."""
        local = self.storage.get_nowait(plan.key)
        if not _dvv.context_within(plan.ctx, local):
            return None
        self._count_put(plan)
        clock = self._update(plan, local)
        self.storage.put_nowait(plan.key, clock)
        self._changed(plan.key, clock)
        return clock

    async def _catch_up(self, key: str, local: Clock | None) -> Clock | None:
        """Merge the other reachable owners' clocks of ``key`` into this replica's (under the
        key lock): a write's context claimed dots this replica has not received yet, and it can
        only honour the claims it can check. Owners that do not answer in time are skipped."""
        self.counters.context_catch_ups += 1
        try:
            targets, _ = self.targets(key)
        except GossipKVError:
            return local
        others = [m for m, hint in targets if m != self.node_id and not hint]
        clocks = [c for c in (await self._gather(key, others)).values() if c is not None]
        if not clocks:
            return local
        merged = self._synced(_dvv.sync_all(clocks), local)
        if merged is None:
            return local
        await self.storage.put(key, merged)
        self._changed(key, merged)
        return merged

    def _count_put(self, plan: PutPlan) -> None:
        if plan.sibling.tombstone:
            self.counters.deletes += 1
        else:
            self.counters.puts += 1

    def _put_outcome(self, plan: PutPlan, clock: Clock, fan: _Fanout) -> PutResult:
        write_acks(fan.tally, plan.need)
        result = PutResult(plan.key, *visible(clock, self.limits))
        if plan.started:
            self.counters.put_latency.observe(trio.current_time() - plan.started)
        self.counters.siblings_seen += max(0, _dvv.size(clock) - 1)
        if plan.rid:
            self._results[plan.rid] = result
            while len(self._results) > self.config.idempotency_cache:
                self._results.popitem(last=False)
        return result

    def _update(self, plan: PutPlan, local: Clock | None) -> Clock:
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

    def _replicate(
        self,
        plan: PutPlan,
        clock: Clock,
        reserved: int,
        on_enough: Callable[[_Fanout], None] | None = None,
    ) -> _Fanout:
        """Send ``clock`` to the other replicas; ``enough`` once W-1 acked (or all answered).
        The fan-out gives back the ``reserved`` memory once every replica answered."""
        others = plan.others
        fan = _Fanout(
            [m for m, _ in others],
            max(plan.need - 1, 0),
            trio.current_time() + self.config.replica_timeout,
            on_enough=on_enough,
            release=partial(self.admission.release, reserved),
        )
        fan.on_reply = self._replica_answered
        try:
            encoded = self._encoded(plan.key, clock) if others else b""
            for member, hint in others:
                if not self._start_replica(
                    fan, member, ReplicaPut(plan.key, encoded, hint), self._on_put_reply
                ):
                    self._nursery_or_fail().start_soon(
                        self._put_to, fan, member, plan.key, clock, hint
                    )
        except BaseException:
            fan.release = None  # the caller gives the reservation back
            raise
        self._track(fan)
        fan.check()
        return fan

    async def _put_to(
        self, fan: _Fanout, member: str, key: str, clock: Clock, hint_for: str
    ) -> None:
        try:
            await self.write_replica(member, key, clock, hint_for)
        except GossipKVError as exc:
            self.count_error(exc)
            fan.failed(member)
        else:
            fan.answered(member, None)

    # --- replica side --------------------------------------------------------------------------

    async def handle(self, message: Message) -> Message:
        """Answer a data-path request from a client or a peer."""
        if isinstance(message, ReplicaGet):
            self._check_key(message.key)
            clock = await self.storage.get(message.key)
            return ReplicaState(None if clock is None else encode_wire_clock(clock))
        if isinstance(message, ReplicaPut):
            self._check_key(message.key)
            clock = self._clock_from_wire(message.clock)
            await self.apply(message.key, clock, hint_for=message.hint_for)
            return ReplicaState(None)
        if isinstance(message, KvGet):
            got = await self.get(message.key, r=message.r, local=message.local)
            return KvResult(got.key, got.found, tuple(got.values), got.context, got.more)
        if isinstance(message, KvPut):
            plan = self._plan_put(message)
            put = plan if isinstance(plan, PutResult) else await self._put_planned(plan)
            return KvResult(put.key, bool(put.values), tuple(put.values), put.context, put.more)
        raise RemoteError("unsupported", f"unsupported request {message.TAG!r}")

    def handle_nowait(self, message: Message) -> Message | None:
        """Answer a replica request at once when that needs no waiting (an engine with
        ``nowait``, no write in progress on the key, no hint to store); else ``None``."""
        if not self.storage.nowait:
            return None
        if isinstance(message, ReplicaGet):
            self._check_key(message.key)
            self.storage.get_nowait(message.key)  # counts the read, checks the engine is open
            found = self.storage.encoded_nowait(message.key)
            return ReplicaState(None if found is None else found[1])
        if isinstance(message, ReplicaPut):
            hinted = message.hint_for and message.hint_for != self.node_id
            if hinted or message.key in self._locks:
                return None
            self._check_key(message.key)
            clock = self._clock_from_wire(message.clock)
            local = self.storage.get_nowait(message.key)
            merged = self._synced(clock, local)
            if merged is not None:
                # Storing exactly what arrived (the usual case: a newer version): keep its bytes.
                same = merged is clock or _dvv.equal(merged, clock)
                encoded = message.clock if same else None
                self.storage.put_nowait(message.key, merged, encoded=encoded)
                self._changed(message.key, merged)
            return ReplicaState(None)
        return None

    def _synced(self, clock: Clock, local: Clock | None) -> Clock | None:
        """``sync`` of an incoming clock with the stored one, or ``None`` if nothing changes."""
        merged = self._resolve(clock if local is None else _dvv.sync(clock, local))
        _dvv.validate(merged, max_siblings=self.limits.max_stored_siblings)
        if local is not None and _dvv.equal(merged, local):
            return None
        return merged

    async def apply(self, key: str, clock: Clock, *, hint_for: str = "") -> None:
        """Store ``clock`` by ``sync`` with the local clock (never an overwrite, never a new dot)."""
        async with self.lock(key):
            local = await self.storage.get(key)
            merged = self._synced(clock, local)
            if merged is not None:
                await self.storage.put(key, merged)
                self._changed(key, merged)
            # The hint is written under the key lock too, so handoff never clears a newer one.
            if hint_for and hint_for != self.node_id:
                await self.hinted.store(hint_for, key, merged if merged is not None else local)

    async def restore(self, key: str, raw: bytes) -> dict[str, object]:
        """Merge a whole clock (``raw``, as replicas exchange it) into every owner of ``key``
        (stand-ins keep a hint for an unreachable owner), as read repair does: a ``sync``, so
        siblings stay siblings and nothing newer is lost (``gossipkv restore``).

        Returns:
          ``{"key", "acks", "owners"}``: how many owners (or stand-ins) stored it.

        Raises:
          RemoteError: ``invalid_clock``. InvalidKey, KeyTooLarge, ClusterNotReady.
          Unavailable: no owner stored it.
        """
        self._check_key(key)
        clock = self._clock_from_wire(raw)
        targets, n = self.targets(key)
        acks = 0
        errors: list[str] = []

        async def store(member: str, hint_for: str) -> None:
            nonlocal acks
            try:
                await self.write_replica(member, key, clock, hint_for)
                acks += 1
            except GossipKVError as exc:
                self.count_error(exc)
                errors.append(f"{member}: {exc}")

        async with trio.open_nursery() as nursery:
            for member, hint_for in targets:
                nursery.start_soon(store, member, hint_for)
        if acks == 0:
            raise Unavailable(f"no owner of {key!r} stored it: {'; '.join(errors) or 'none'}")
        return {"key": key, "acks": acks, "owners": n}

    async def read_replica(self, member: str, key: str) -> Clock | None:
        """``member``'s own clock of ``key`` (this peer's when it is ``member``).

        Raises:
          TransportError, Unavailable: it could not be reached or did not answer in time.
        """
        return await self._replica_get(member, key)

    async def _gather(self, key: str, members: list[str]) -> dict[str, Clock | None]:
        """Every listed member's clock of ``key`` (those that fail or time out are left out)."""
        replies: dict[str, Clock | None] = {}

        async def ask(member: str) -> None:
            try:
                replies[member] = await self._replica_get(member, key)
            except GossipKVError as exc:
                self.count_error(exc)

        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(ask, member)
        return replies

    async def repair_key(self, key: str) -> bool:
        """Read ``key`` from every reachable owner and bring the stale replicas (this one
        included) up to date by ``sync``: how a quarantined record is restored.

        Returns:
          True when another replica answered, so this one now holds what they hold.

        Raises:
          ClusterNotReady: no partition table yet (try again later).
        """
        targets, _ = self.targets(key)
        replies = await self._gather(key, [m for m, _ in targets])
        if not any(m != self.node_id for m in replies):
            return False
        replies.setdefault(self.node_id, None)
        await self._repair(key, replies)
        return True

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

    async def _fetch_partition(self, member: str, message: PartitionFetch) -> PartitionItems:
        # A page may need a few hundred disk reads at the source: allow several replica timeouts.
        with trio.move_on_after(self.config.replica_timeout * 5):
            reply = await self._send(member, message)
            if not isinstance(reply, PartitionItems):
                raise Unavailable(f"unexpected reply {reply.TAG} from {member}")
            return reply
        raise TransportError(f"{member} did not send a page of partition {message.partition}")

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
                self._check_key(key)
                checked.append((key, self._clock_from_wire(raw)))
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

    async def _clock_bytes(self, keys: list[str]) -> list[bytes | None]:
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

    # --- helpers -------------------------------------------------------------------------------

    async def _replica_get(self, member: str, key: str) -> Clock | None:
        if member == self.node_id:
            return await self.storage.get(key)
        with trio.move_on_after(self.config.replica_timeout):
            reply = await self._send(member, ReplicaGet(key))
            if not isinstance(reply, ReplicaState):
                raise Unavailable(f"unexpected reply {reply.TAG} from {member}")
            return None if reply.clock is None else self._clock_from_wire(reply.clock)
        raise TransportError(f"{member} did not answer in time")

    async def write_replica(self, member: str, key: str, clock: Clock, hint_for: str) -> None:
        if member == self.node_id:
            await self.apply(key, clock, hint_for=hint_for)
            return
        with trio.move_on_after(self.config.replica_timeout):
            await self._send(member, ReplicaPut(key, encode_wire_clock(clock), hint_for))
            return
        raise TransportError(f"{member} did not acknowledge in time")

    def _resolve(self, clock: Clock) -> Clock:
        return resolve(clock, last_write_wins=self.config.last_write_wins)

    def _clock_from_wire(self, raw: bytes) -> Clock:
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

    def _encoded(self, key: str, clock: Clock) -> bytes:
        """``clock`` as canonical CBOR: the bytes an in-memory replica already keeps for it
        when it is the stored clock, else freshly encoded."""
        if self.storage.nowait:
            found = self.storage.encoded_nowait(key)
            if found is not None and found[0] is clock:
                return found[1]
        return encode_wire_clock(clock)

    def _result(self, key: str, clock: Clock | None) -> GetResult:
        if clock is None:
            return GetResult(key, False, [], b"")
        values, context, more = visible(clock, self.limits)
        return GetResult(key, bool(values), values, context, more)

    def _check_key(self, key: object) -> None:
        encode_key(key, self.limits)

    def _changed(self, key: str, clock: Clock) -> None:
        self.changes += 1
        self.reaper.note(key, clock)
        if self.on_change is not None:
            self.on_change(key, clock)

    def count_error(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self.counters.errors[kind] = self.counters.errors.get(kind, 0) + 1
        if isinstance(exc, StorageError):
            log.error("storage error: %s", exc)

    def _nursery_or_fail(self) -> trio.Nursery:
        if self._nursery is None:
            raise ClusterNotReady("the data path is not running yet")
        return self._nursery

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
