"""Ownership handoff: keys a peer holds for partitions it no longer owns reach the current owners.

Pattern: Ownership Handoff (Riak), kept simple. When the leader publishes a new partition table, a
partition's new owners may never have held its keys; the old owners still do, and neither reads
(which ask only current owners) nor anti-entropy (which compares current owners with each other)
would bring them over. Every ``ownership_handoff_interval`` seconds (jittered) a peer looks at the
partitions it holds keys in but does not own, and sends each key's clock to every current owner
of its partition in a ``ReplicaPut``: a ``sync`` there, never an overwrite, never a new dot. At
most ``MAX_KEYS_PER_ROUND`` keys a round; a partition is resumed where the last round stopped.

A partition handed off completely is remembered with its owner list and the digest of what this
peer holds of it (the root of its anti-entropy Merkle tree, kept current on every write, so a
round reads nothing to find what changed), so it is not sent again until either changes (a
new table, or a late write or a stand-in's hinted write stored here). Local copies are kept: a
former owner keeps them although reads no longer ask it (a known limit; old tombstones among them
are handed back and forgotten by the tombstone reaper, ``gossipkv._reaper``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._antientropy import run_jittered
from ._errors import GossipKVError, TransportError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._merkle import MerkleTrees
    from ._replica_store import ReplicaStore

log = logging.getLogger("gossipkv.handoff")

#: Keys sent (each to every current owner of its partition) per round at most.
MAX_KEYS_PER_ROUND = 256


@dataclass(slots=True)
class OwnershipHandoffCounters:
    """What this peer's ownership handoff did (as :class:`~gossipkv.NodeStatistics` reports it)."""

    rounds: int = 0
    partitions_handed_off: int = 0
    keys_sent: int = 0
    errors: int = 0


class OwnershipHandoff:
    """One peer's ownership handoff (the sending side; owners receive plain ``ReplicaPut``\\ s).

    Args:
      service: this peer's data path (its storage, table, reachability and replica calls).
      rng: randomness for the jitter.
      trees: this peer's anti-entropy Merkle trees for a partition count (their roots tell
        whether a partition changed since it was last handed off).
    """

    def __init__(
        self,
        service: ReplicaStore,
        rng: random.Random,
        trees: Callable[[int], Awaitable[MerkleTrees]],
    ) -> None:
        self._kv = service
        self._trees = trees
        self._rng = rng
        #: partition -> (its owners, digest of what this peer held) when last handed off whole.
        self._done: dict[int, tuple[tuple[str, ...], bytes]] = {}
        #: partition -> (its owners, the last key sent, the local digest when this pass began)
        #: while a handoff is part way through. A pass that completes is remembered with the
        #: digest it began with, so a write during the pass (behind the cursor) is sent again.
        self._resume: dict[int, tuple[tuple[str, ...], str, bytes]] = {}
        #: (table epoch, ``service.changes``) after a round that left nothing to send.
        self._idle_at: tuple[tuple[int, int], int] | None = None
        self.counters = OwnershipHandoffCounters()

    async def run(self) -> None:
        """Hand off every interval until cancelled (return at once when the interval is 0)."""
        await run_jittered(
            self._kv.config.ownership_handoff_interval, self._rng, self.round, self._round_failed
        )

    def _round_failed(self, exc: GossipKVError) -> None:
        self.counters.errors += 1
        self._kv.count_error(exc)
        log.debug("ownership handoff round failed: %s", exc)

    async def round(self) -> int:
        """Send up to ``MAX_KEYS_PER_ROUND`` keys of partitions this peer no longer owns.

        Returns:
          The keys sent this round (each to every current owner of its partition).

        Raises:
          GossipKVError: the local storage failed (an owner that fails only stops that
            partition for this round; it is counted in ``errors``).
        """
        kv = self._kv
        table = kv.table()
        if table is None or not table.owners:
            return 0
        changes = kv.changes
        if self._idle_at == (table.epoch, changes):
            return 0  # nothing was stored here and the table is the same: nothing new to send
        self.counters.rounds += 1
        me = kv.node_id
        trees = await self._trees(table.q)
        digests = {p: trees.root(p).to_bytes(8, "big") for p in trees.partitions() if trees.root(p)}
        reachable = kv.reachable()
        failed: set[str] = set()  # owners that timed out this round: no partition waits on them
        budget = MAX_KEYS_PER_ROUND
        pending = False
        for p in sorted(digests):
            owners = table.owners[p] if p < table.q else ()
            if not owners or me in owners or self._done.get(p) == (owners, digests[p]):
                continue
            if budget <= 0 or not all(o in reachable and o not in failed for o in owners):
                pending = True  # an owner is away: wait for it rather than time out key by key
                continue
            sent, began = await self._hand_off(p, table.q, owners, digests[p], budget, failed)
            budget -= sent
            if began is not None:
                self._done[p] = (owners, began)
                self.counters.partitions_handed_off += 1
            else:
                pending = True
        self._idle_at = None if pending else (table.epoch, changes)
        return MAX_KEYS_PER_ROUND - budget

    async def _hand_off(
        self,
        partition: int,
        q: int,
        owners: tuple[str, ...],
        digest: bytes,
        budget: int,
        failed: set[str],
    ) -> tuple[int, bytes | None]:
        """Send keys of ``partition`` after the remembered one.

        Returns ``(keys sent, the digest the pass began with)``, the digest ``None`` while the
        pass is not complete. An owner that does not answer is added to ``failed`` and ends this
        partition's turn."""
        kv = self._kv
        resume = self._resume.get(partition)
        if resume is not None and resume[0] == owners:
            _, after, began = resume
        else:
            after, began = "", digest
        keys = sorted(
            [
                (key, clock)
                async for key, clock in kv.storage.scan(partition, q)
                if key > after and (clock.entries or clock.anonymous)
            ],
            key=lambda item: item[0],
        )
        sent = 0
        for key, clock in keys:
            if sent >= budget:
                self._resume[partition] = (owners, after, began)
                return sent, None
            current = await kv.storage.get(key)  # the newest, not the scan's snapshot
            for owner in owners:
                try:
                    await kv.write_replica(owner, key, current or clock, "")
                except GossipKVError as exc:
                    self.counters.errors += 1
                    kv.count_error(exc)
                    log.debug("handoff of %r to %s failed: %s", key, owner, exc)
                    if isinstance(exc, TransportError):
                        # The owner is away or slow: stop here, resume from this key later.
                        self._resume[partition] = (owners, after, began)
                        failed.add(owner)
                        return sent, None
                    # The owner refused the key (a typed error): retrying would not help.
            after = key
            sent += 1
            self.counters.keys_sent += 1
        self._resume.pop(partition, None)
        return sent, began
