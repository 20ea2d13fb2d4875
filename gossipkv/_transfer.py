"""Transfers: partitions move to their new owners by streaming, with flow control and resume.

Whenever the partition table changes (a join, a leave, a removal, a replacement), data must
follow ownership. A member pulls a partition from a member that held it before:

* every partition it *gains* (it is an owner now and was not before) from every old owner,
  so it ends up with every key any of them held;
* every partition one of its co-owners *left* (a leaver, a member moved elsewhere) from that
  former owner, so what only the former owner held (a write it alone acknowledged) stays on N
  copies.

A transfer is receiver-driven (:class:`Transfers`): it asks the source for a page of keys after
its cursor (:class:`~gossipkv._messages.PartitionFetch`), stores each clock by ``sync`` (never an
overwrite), and asks for the next page: at most one page is in flight per transfer, which is the
flow control. A broken connection or a dead source only pauses it; it resumes from the cursor.
When the source has nothing after the cursor, the receiver confirms with ``done``: the source
(:class:`TransferSource`) records the hand-off, and a leaving member exits only once every
current owner of every partition it held has confirmed (see :meth:`TransferSource.handed_off`).

Sources that are removed from the cluster are dropped (what they alone held is gone with them,
as in any removal); sources that are down but not removed keep the partition pending.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ._antientropy import run_jittered
from ._dvv import partition_of
from ._errors import ClusterNotReady, GossipKVError, InvalidArgument, RemoteError
from ._messages import PartitionFetch, PartitionItems
from ._partitions import PartitionTable

log = logging.getLogger("gossipkv.transfer")

#: Keys per page, and the clock bytes a page may carry (at least one key always goes).
PAGE_KEYS = 512
PAGE_BYTES = 1024 * 1024
#: Listings a source keeps between the pages of different transfers (oldest dropped first).
MAX_LISTINGS = 64


@dataclass(slots=True)
class Transfer:
    """One partition streaming from one source into this member.

    Attributes:
      partition: the partition.
      source: the member it comes from.
      cursor: the last key stored (the next page starts after it).
      keys_done: keys stored so far.
      keys_total: keys the source listed (0 before the first page).
      started: ``trio.current_time()`` of the first page.
      finished: when it was confirmed, or ``None`` while in flight.
    """

    partition: int
    source: str
    #: A full pull streams every key; otherwise the partition is compared with the source by
    #: Merkle tree and only what differs moves (anti-entropy's exchange, until they agree).
    full: bool = True
    cursor: str = ""
    keys_done: int = 0
    keys_total: int = 0
    started: float | None = None
    finished: float | None = None
    #: Why the last page failed (a refused or invalid page, an unreachable source), if it did.
    error: str | None = None

    def rate(self, now: float) -> float:
        """Keys per second since the first page."""
        if self.started is None:
            return 0.0
        return self.keys_done / max(((self.finished or now) - self.started), 1e-3)


@dataclass(slots=True)
class TransferCounters:
    """What this member's transfers did (reported in ``NodeStatistics``)."""

    partitions_filled: int = 0
    keys_filled: int = 0
    pages: int = 0
    errors: int = 0
    #: Pages refused whole because the source sent something invalid (nothing of them stored).
    bad_pages: int = 0


@dataclass(slots=True)
class _Pending:
    """A partition to pull: its transfers, one per source."""

    transfers: dict[str, Transfer] = field(default_factory=dict)
    #: Gained (this member held none of it): one transfer must be a full pull.
    gained: bool = False


class Transfers:
    """The receiving side: pulls the partitions a table change gave this member.

    Args:
      node_id: this member.
      table: the newest partition table (``None`` before there is one).
      known: the table this member knew before it started (persisted), ``None`` if none.
      reachable: the members this peer can reach now.
      removed: whether a member has been removed from the cluster (its transfers are dropped).
      fetch: sends a :class:`PartitionFetch` to a member and returns its reply.
      store: stores a page of ``(key, clock bytes)`` by ``sync``; returns the keys stored.
      compare: anti-entropy's exchange of a partition with one member (both ways); returns the
        keys it repaired, 0 once the two agree.
      interval: seconds between looks at the work (jittered); 0 turns transfers off.
      rng: the jitter's randomness.
    """

    def __init__(
        self,
        *,
        node_id: str,
        table: Callable[[], PartitionTable | None],
        known: PartitionTable | None,
        reachable: Callable[[], set[str]],
        removed: Callable[[str], bool],
        fetch: Callable[[str, PartitionFetch], Awaitable[PartitionItems]],
        store: Callable[[list[tuple[str, bytes]]], Awaitable[int]],
        compare: Callable[[str, int, int], Awaitable[int]],
        interval: float,
        rng: random.Random,
    ) -> None:
        self._me = node_id
        self._table = table
        self._seen = known
        self._reachable = reachable
        self._removed = removed
        self._fetch = fetch
        self._store = store
        self._compare = compare
        self._interval = interval
        self._rng = rng
        self._pending: dict[int, _Pending] = {}
        self._q = 0
        self._wake = trio.Event()
        #: Finished transfers, newest last (a bounded history for ``gossipkv transfers``).
        self.recent: list[Transfer] = []
        self.counters = TransferCounters()

    # --- what is pending ---------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Partitions with a transfer still to finish (0 when transfers are off)."""
        if self._interval <= 0:
            return 0
        self.notice()
        return len(self._pending)

    def filled(self) -> bool:
        """Whether nothing is left to pull (always true when transfers are off)."""
        return self.pending == 0

    def in_flight(self) -> list[Transfer]:
        """The transfers not finished yet."""
        self.notice()
        return [
            t for p in self._pending.values() for t in p.transfers.values() if t.finished is None
        ]

    def refill(self) -> None:
        """Pull every partition this member owns again from its other owners, as if it had
        never held any (its replica was wiped: see :mod:`gossipkv._reaper`)."""
        self._seen = None
        self.notice()

    def notice(self) -> None:
        """Look at the newest table now (cheap when it has not changed): the runtime calls it
        after every membership evaluation, so no table this member passes through is missed."""
        table = self._table()
        if table is None or table is self._seen:
            return
        before, self._seen = self._seen, table
        if before is not None and before.q != table.q:
            before = None
        if self._q != table.q:
            self._pending.clear()
            self._q = table.q
        added = 0
        for p, row in enumerate(table.owners):
            if self._me not in row:
                self._pending.pop(p, None)
                continue
            old = before.owners[p] if before is not None else ()
            gained = self._me not in old
            if gained:
                # Gained: one full pull (from a former owner leaving the row, when there is
                # one), then a comparison with every other old owner for what only it held.
                candidates = [o for o in (old or row) if o != self._me]
                sources = sorted(candidates, key=lambda o: (self._removed(o), o in row))
            else:
                sources = [o for o in old if o not in row]  # former owners that left this row
            if not sources:
                continue
            entry = self._pending.setdefault(p, _Pending())
            entry.gained = entry.gained or gained
            for i, source in enumerate(sources):
                known = entry.transfers.get(source)
                # A transfer finished for an earlier table says nothing of this change: pull
                # again (a leaver waits for confirmations made since it began to leave).
                if known is None or known.finished is not None:
                    entry.transfers[source] = Transfer(p, source, full=gained and i == 0)
                    added += 1
        if added:
            log.info("%s: %d partition transfers to pull", self._me, added)
            self._wake.set()

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Pull what is pending, about every interval, until cancelled."""
        await run_jittered(self._interval, self._rng, self.round, self._failed)

    def _failed(self, exc: GossipKVError) -> None:
        self.counters.errors += 1
        log.debug("transfer failed: %s", exc)

    async def round(self) -> None:
        """Advance every pending transfer whose source is reachable; failures wait."""
        self.notice()
        reachable = self._reachable()
        for p, entry in list(self._pending.items()):
            for source in [s for s, t in entry.transfers.items() if t.finished is None]:
                if self._removed(source):
                    del entry.transfers[source]  # gone for good: nothing more to get from it
            if entry.gained and not any(t.full for t in entry.transfers.values()):
                # The full pull's source is gone: another old owner streams it instead (a
                # comparison alone would fill an empty partition a page of repairs at a time).
                live = [t for t in entry.transfers.values() if t.source in reachable]
                if live:
                    live[0].full = True
            for source, transfer in list(entry.transfers.items()):
                if transfer.finished is not None:
                    continue
                if source not in reachable:
                    continue
                try:
                    await self._pull(transfer)
                except GossipKVError as exc:
                    transfer.error = str(exc)
                    self._failed(exc)
            if self._pending.get(p) is entry and all(
                t.finished is not None for t in entry.transfers.values()
            ):
                del self._pending[p]
                self.counters.partitions_filled += 1
                self.recent.extend(entry.transfers.values())
                del self.recent[:-256]

    async def _pull(self, transfer: Transfer) -> None:
        q = self._q
        if transfer.started is None:
            transfer.started = trio.current_time()
        if not transfer.full:
            for _ in range(10_000):
                repaired = await self._compare(transfer.source, transfer.partition, q)
                transfer.keys_done += repaired
                self.counters.keys_filled += repaired
                if repaired == 0:
                    break
        while transfer.full:
            page = await self._fetch(
                transfer.source,
                PartitionFetch(transfer.partition, q, transfer.cursor, PAGE_KEYS),
            )
            self.counters.pages += 1
            try:
                self._check_page(transfer, page)
                stored = await self._store(list(zip(page.keys, page.clocks, strict=True)))
            except RemoteError as exc:
                if exc.code == "bad_reply":
                    self.counters.bad_pages += 1
                raise
            if transfer.started is None:
                transfer.started = trio.current_time()
            transfer.keys_total = max(transfer.keys_total, page.total)
            transfer.error = None
            if page.keys:
                transfer.keys_done += len(page.keys)
                self.counters.keys_filled += stored
                transfer.cursor = page.keys[-1]
            if not page.more:
                break
        # Everything up to the cursor is stored: confirm, so a leaver may go.
        await self._fetch(
            transfer.source, PartitionFetch(transfer.partition, q, transfer.cursor, 0, done=True)
        )
        transfer.finished = trio.current_time()
        transfer.error = None

    def _check_page(self, transfer: Transfer, page: PartitionItems) -> None:
        """Refuse a page that is not a continuation of ``transfer`` (checked before anything of
        it is stored; the cursor stays, so the page is asked for again later).

        Raises:
          RemoteError: ``bad_reply``: keys and clocks unpaired, keys not strictly increasing
            after the cursor, or a key of another partition.
        """
        source = transfer.source
        if len(page.keys) != len(page.clocks):
            raise RemoteError("bad_reply", f"{source} sent keys and clocks unpaired")
        previous = transfer.cursor
        for i, key in enumerate(page.keys):
            if (i or previous) and key <= previous:
                raise RemoteError("bad_reply", f"{source} sent keys out of order")
            if partition_of(key, self._q) != transfer.partition:
                raise RemoteError(
                    "bad_reply",
                    f"{source} sent key {key[:64]!r} of partition {partition_of(key, self._q)} "
                    f"in a page of partition {transfer.partition}",
                )
            previous = key


class TransferSource:
    """The sending side: pages of a partition from a sorted listing, and the hand-offs
    receivers confirmed.

    Args:
      table: the newest partition table.
      keys: the sorted keys of a partition (from the storage index).
      clocks: the canonical clock bytes of some keys (``None`` for a key gone since listing).
    """

    def __init__(
        self,
        *,
        table: Callable[[], PartitionTable | None],
        keys: Callable[[int, int], Awaitable[list[str]]],
        clocks: Callable[[list[str]], Awaitable[list[bytes | None]]],
    ) -> None:
        self._table = table
        self._keys = keys
        self._clocks = clocks
        self._listings: OrderedDict[tuple[str, int], list[str]] = OrderedDict()
        #: ``(partition, receiver)`` -> when (``trio.current_time()``) the receiver confirmed a
        #: complete pull of it.
        self.handed: dict[tuple[int, str], float] = {}
        self.pages_sent = 0

    async def handle(self, receiver: str, message: PartitionFetch) -> PartitionItems:
        """Answer one page (or record a confirmation).

        Raises:
          RemoteError: ``bad_request`` for a partition out of range or another partition count.
          ClusterNotReady: no table yet.
        """
        table = self._table()
        if table is None or not table.owners:
            raise ClusterNotReady("the cluster has no partition table yet; retry shortly")
        if message.q != table.q or not 0 <= message.partition < table.q:
            raise InvalidArgument(
                f"partition {message.partition} of q={message.q} is not in the table"
            )
        ident = (receiver, message.partition)
        if message.done:
            self.handed[(message.partition, receiver)] = trio.current_time()
            self._listings.pop(ident, None)
            return PartitionItems()
        listing = self._listings.get(ident)
        if listing is None or not message.after:
            listing = await self._keys(message.partition, table.q)
            self._listings[ident] = listing
            while len(self._listings) > MAX_LISTINGS:
                self._listings.popitem(last=False)
        self._listings.move_to_end(ident)
        limit = min(message.limit, PAGE_KEYS) if message.limit > 0 else PAGE_KEYS
        start = bisect.bisect_right(listing, message.after)
        keys: list[str] = []
        out: list[bytes] = []
        size = 0
        last = message.after
        # Keys deleted from the index since the listing are skipped; a page is never empty
        # while later keys remain (the receiver could not move its cursor past them).
        while not keys and start < len(listing):
            wanted = listing[start : start + limit]
            start += len(wanted)
            clocks = await self._clocks(wanted)
            for key, clock in zip(wanted, clocks, strict=True):
                if clock is None:
                    last = key
                    continue
                if out and size + len(clock) > PAGE_BYTES:
                    break
                keys.append(key)
                out.append(clock)
                size += len(clock)
                last = key
        more = bisect.bisect_right(listing, last) < len(listing)
        self.pages_sent += 1
        return PartitionItems(tuple(keys), tuple(out), more, len(listing))

    def handed_off(self, partition: int, receivers: set[str]) -> bool:
        """Whether every one of ``receivers`` confirmed a complete pull of ``partition``."""
        return all((partition, r) in self.handed for r in receivers)
