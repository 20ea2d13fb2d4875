"""Filling gained partitions: a member that becomes an owner of a partition pulls its keys from
the partition's other owners at once, instead of waiting for anti-entropy to come round to it.

This is what makes a removal re-replicate right away (the members that take over a removed
member's partitions fetch them from the surviving owners) and what fills a replacement before it
answers reads (``gossipkv peer --replace``). Each partition is pulled by anti-entropy's own
exchange (digest, then per-key hashes in pages, then ``sync`` of what differs) repeated until
the digests agree, from each other owner that held the partition before the table changed.

A partition counts as gained when this member owns it in the newest table and did not own it in
the table it knew before (after a start: the table persisted in its data dir; a member that
never had one gains every partition it owns).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._antientropy import run_jittered
from ._errors import GossipKVError
from ._partitions import PartitionTable

log = logging.getLogger("gossipkv.fill")

#: Exchanges (each repairs at most a page of differing keys) before one fill gives up for now.
MAX_EXCHANGES = 10_000


@dataclass(slots=True)
class FillCounters:
    """What filling gained partitions did (reported in ``NodeStatistics``)."""

    partitions_filled: int = 0
    keys_filled: int = 0
    errors: int = 0


class PartitionFill:
    """Pulls the partitions this member gains from their other owners.

    Args:
      node_id: this member.
      table: the newest partition table (``None`` before there is one).
      known: the table this member knew before (persisted), ``None`` if none.
      reachable: the members this peer can reach now.
      compare: anti-entropy's exchange of one partition with one owner; returns the keys it
        repaired (0 once the two agree).
      interval: seconds between looks at the table (jittered).
      rng: the jitter's randomness.
    """

    def __init__(
        self,
        *,
        node_id: str,
        table: Callable[[], PartitionTable | None],
        known: PartitionTable | None,
        reachable: Callable[[], set[str]],
        compare: Callable[[str, int, int], Awaitable[int]],
        interval: float,
        rng: random.Random,
    ) -> None:
        self._me = node_id
        self._table = table
        self._seen = known
        self._reachable = reachable
        self._compare = compare
        self._interval = interval
        self._rng = rng
        #: partition -> the owners to pull it from (those that held it before it was gained).
        self._pending: dict[int, tuple[str, ...]] = {}
        self._q = 0
        self.counters = FillCounters()

    @property
    def pending(self) -> int:
        """Gained partitions not filled yet (0 when filling is off)."""
        if self._interval <= 0:
            return 0
        self._notice()
        return len(self._pending)

    def filled(self) -> bool:
        """Whether every partition this member gained has been pulled (true with no table, and
        always when filling is off)."""
        return self._interval <= 0 or self.pending == 0

    def notice(self) -> None:
        """Look at the newest table now (cheap when it has not changed): the runtime calls it
        after every membership evaluation, so no table this member passes through is missed."""
        self._notice()

    def _notice(self) -> None:
        """Queue the partitions the newest table gives this member that the last one did not."""
        table = self._table()
        if table is None or table is self._seen:
            return
        before = self._seen
        self._seen = table
        if before is not None and before.q != table.q:
            before = None
        if self._q != table.q:
            self._pending.clear()
            self._q = table.q
        for p, row in enumerate(table.owners):
            if self._me not in row:
                self._pending.pop(p, None)
                continue
            old = before.owners[p] if before is not None else ()
            if self._me in old:
                continue
            sources = tuple(o for o in (old or row) if o != self._me)
            if sources:
                self._pending[p] = sources
        if self._pending:
            log.info("%s gained %d partitions to fill", self._me, len(self._pending))

    async def run(self) -> None:
        """Fill what was gained, looking at the table every interval, until cancelled."""
        await run_jittered(self._interval, self._rng, self.round, self._failed)

    def _failed(self, exc: GossipKVError) -> None:
        self.counters.errors += 1
        log.debug("filling partitions failed: %s", exc)

    async def round(self) -> None:
        """Pull every pending partition from one reachable source; what fails waits."""
        self._notice()
        reachable = self._reachable()
        for p, sources in list(self._pending.items()):
            live = [s for s in sources if s in reachable]
            if not live:
                continue
            try:
                for source in live:
                    for _ in range(MAX_EXCHANGES):
                        repaired = await self._compare(source, p, self._q)
                        self.counters.keys_filled += repaired
                        if repaired == 0:
                            break
            except GossipKVError as exc:
                self._failed(exc)
                continue
            if self._pending.get(p) == sources:
                del self._pending[p]
                self.counters.partitions_filled += 1
