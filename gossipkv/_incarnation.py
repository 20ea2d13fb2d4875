"""A member's incarnation: who it starts as, and the record it keeps while it runs.

At start, :func:`plan_start` reads the record the last incarnation persisted (sans-IO): the
name, a new generation above the stored one (Generation Clock), the membership decisions it may
trust, whom to join through and whether to start a new cluster. While it runs,
:class:`Incarnation` keeps that record current (decisions, known peers, when it was last alive,
what the cluster reaped), and guards the replica: a member back after more than
``tombstone_grace`` away keeps its data path closed until gossip tells it the cluster's
``reaped_upto``, and drops its data if tombstones were reaped meanwhile (they could bring deleted
values back), to refill it from the other owners (see :mod:`gossipkv._reaper`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ._errors import ConfigError, DataDirError
from ._kv import KeyValueService
from ._node_config import NodeConfig
from ._persist import NodeStore, PeerRecord
from .membership._gossiper import Gossiper
from .membership._leader import Decisions
from .storage import StorageEngine

log = logging.getLogger("gossipkv.node")


@dataclass(frozen=True, slots=True)
class Start:
    """Who a member starts as and how it joins (see :func:`plan_start`)."""

    name: str
    generation: int
    #: The persisted decisions it may trust (``None``: none, or none that could be trusted).
    decisions: Decisions | None
    #: Whom to join through: the given seeds, then the members the record remembers.
    seeds: list[str]
    bootstrap: bool
    #: What to persist before the first gossip.
    record: PeerRecord


def plan_start(
    settings: NodeConfig, record: PeerRecord | None, address: str, wall_ms: int
) -> Start:
    """Plan a member's start from its settings and the record of its last incarnation.

    Args:
      settings: the node's configuration.
      record: what the last incarnation persisted (``None``: a member that never ran).
      address: the address it advertises (bound already).
      wall_ms: the wall clock now.

    Raises:
      DataDirError: the record belongs to another member.
      ConfigError: the only seeds are this member's own address.
    """
    name = settings.name or (record.node_id if record else None) or address
    if record is not None and record.node_id != name:
        raise DataDirError(
            f"data dir {settings.data_dir} belongs to member {record.node_id!r}, not "
            f"{name!r}: start it as --name {record.node_id} or use another data dir"
        )
    given = settings.seeds
    if given and set(given) <= {address, settings.listen}:
        raise ConfigError(f"--seed {given[0]} is this peer's own address")
    stored_gen = record.generation if record else 0
    generation = max(stored_gen + 1, wall_ms)
    decisions = Decisions.from_plain(record.decisions) if record else None
    if record is not None and record.decisions is not None and decisions is None:
        log.error(
            "%s: the persisted membership decisions are malformed and were ignored; "
            "the peer rejoins through its seeds",
            name,
        )
    if decisions is not None:
        # What a forged record may have left on disk before this version vetted gossip.
        ahead = int(settings.config.max_generation_ahead * 1000)
        problems = Decisions().vet(decisions, max_generation=generation + ahead, seen=None)
        if problems:
            log.error(
                "%s: the persisted membership decisions hold what no leader could have "
                "decided (%s); that part was dropped%s",
                name,
                ", ".join(sorted(set(problems))),
                "" if decisions.term else " and the peer rejoins through its seeds",
            )
            if not decisions.term:
                decisions = None
    known = record.known_peers if record else []
    seeds = [s for s in dict.fromkeys([*settings.seeds, *known]) if s != address]
    # A peer with nothing to join through starts a new cluster: one that never belonged
    # to a cluster (no record), or one that left its cluster (or was removed) knowing no
    # other member, as the only member of a cluster does. A restarted member resumes its
    # admission (that wins over bootstrapping), or rejoins through the members it
    # remembers, even without --seed.
    chosen = settings.bootstrap
    bootstrap = chosen if chosen is not None else not seeds
    if bootstrap and chosen is None and record is not None:
        if decisions is None or decisions.admission(name) is None:
            log.warning(
                "%s holds no admission (it left, was removed, or was never admitted) "
                "and knows no member to rejoin through: it starts a new cluster (give "
                "--seed to join one instead)",
                name,
            )
    persisted = PeerRecord(
        name,
        generation,
        decisions.to_plain() if decisions else None,
        known,
        # Kept as they were until this incarnation has checked its data (a crash
        # meanwhile must not make a long absence look short).
        record.alive_ms if record else 0,
        record.reaped_upto_ms if record else 0,
    )
    return Start(name, generation, decisions, seeds, bootstrap, persisted)


class Incarnation:
    """The record a running member keeps, and the guard on its replica (see the module
    docstring).

    Args:
      gossiper: the membership core (the node's, once it runs).
      kv: the data path, once it exists.
      service: the data path, refused once the node stopped.
      nursery: where the data path starts once the check passed.
      store: where the record is kept.
      wall: the wall clock in ms.
      tombstone_grace: ``KVConfig.tombstone_grace`` (seconds).

    Attributes:
      checking: the data path stays closed: this member is back after more than
        ``tombstone_grace`` away and waits for the cluster's ``reaped_upto``.
      wiped: keys dropped because the replica was stale.
    """

    def __init__(
        self,
        *,
        gossiper: Callable[[], Gossiper],
        kv: Callable[[], KeyValueService | None],
        service: Callable[[], KeyValueService],
        nursery: Callable[[], trio.Nursery],
        store: NodeStore,
        wall: Callable[[], int],
        tombstone_grace: float,
    ) -> None:
        self._gossiper = gossiper
        self._kv = kv
        self._service = service
        self._nursery = nursery
        self._store = store
        self._wall = wall
        self._grace = tombstone_grace
        self.checking = False
        self.wiped = 0
        self._rejoins = False
        self._alive_before = 0
        self._alive_saved_at = -math.inf
        self._reaped_saved = 0

    def begin(self, kv: KeyValueService, record: PeerRecord | None, *, rejoins: bool) -> bool:
        """Take over what the last incarnation recorded; whether the data path may start now
        (``False``: it waits for the check, see :attr:`checking`)."""
        g = self._gossiper()
        kv.reaper.on_reaped_upto = self._publish_reaped_upto
        if record is not None:
            kv.reaper.reaped_upto = self._reaped_saved = record.reaped_upto_ms
            g.set_reaped_upto(record.reaped_upto_ms)
            self._alive_before = record.alive_ms
        grace_ms = self._grace * 1000
        away_ms = self._wall() - self._alive_before
        self.checking = self._alive_before > 0 and away_ms > grace_ms
        self._rejoins = rejoins
        if self.checking:
            log.warning(
                "%s was last alive %.0fs ago, longer than tombstone_grace (%.0fs): its data "
                "path stays closed until the cluster says whether tombstones were reaped "
                "meanwhile",
                g.node_id,
                away_ms / 1000,
                self._grace,
            )
        return not self.checking

    async def _publish_reaped_upto(self, wall_ms: int) -> None:
        """The reaper is about to delete tombstones written up to ``wall_ms``: gossip it and
        persist it first (see :mod:`gossipkv._reaper`, case b)."""
        self._gossiper().set_reaped_upto(wall_ms)
        await self.save()

    async def tend(self, g: Gossiper) -> None:
        """Record that this member is alive (every little while), and finish the check of a
        member back from a long absence once gossip told it the cluster's ``reaped_upto``."""
        kv = self._kv()
        if kv is None:
            return
        now = trio.current_time()
        every = min(60.0, self._grace / 10)
        if not self.checking:
            # Every member carries the cluster's reaped_upto on (and persists it), so it
            # outlives the member that reaped.
            upto = g.reaped_upto()
            if upto > self._reaped_saved:
                self._reaped_saved = upto
                g.set_reaped_upto(upto)
                await self.save()
            if now - self._alive_saved_at >= every:
                self._alive_saved_at = now
                await self.save()
            return
        knows_others = self._rejoins or any(not m.is_self for m in g.members(now))
        if knows_others and g.counters.deltas_applied == 0:
            return  # no gossip heard yet: the cluster's reaped_upto is unknown
        upto = g.reaped_upto()
        if upto > self._alive_before:
            await self.wipe(
                f"{g.node_id} was away longer than tombstone_grace and tombstones written "
                "meanwhile were reaped"
            )
        self.checking = False
        await self._nursery().start(kv.run)

    async def wipe(self, why: str) -> None:
        """Drop every key and hint this member holds (it could bring back deleted values) and
        pull its partitions again from the other owners."""
        kv = self._service()
        keys = await _delete_all(kv.storage)
        for key in keys:
            kv.reaper.forget(key)
        hints = await _delete_all(kv.hints)
        kv.drop_pending_hints()
        self.wiped += len(keys)
        kv.transfers.refill()
        log.warning(
            "%s: dropped its %d stored keys and %d hints; it refills from the other owners "
            "(a member away longer than tombstone_grace is rebuilt, as Cassandra does after "
            "gc_grace)",
            why,
            len(keys),
            len(hints),
        )

    async def save(self) -> None:
        """Persist the record: the decisions, the known members, when this member was last alive
        and what the cluster reaped (a failure is logged; the decisions stay dirty, so the next
        evaluation tries again)."""
        g = self._gossiper()
        g.decisions_dirty = False
        peers = g.member_addresses()
        alive = self._alive_before if self.checking else self._wall()
        kv = self._kv()
        reaped = max(self._reaped_saved, kv.reaper.reaped_upto if kv else 0)
        record = PeerRecord(
            g.node_id, g.generation, g.decisions.to_plain(), peers[:64], alive, reaped
        )
        try:
            await self._store.save(record)
        except Exception as exc:
            g.decisions_dirty = True
            log.error("cannot persist membership state: %s", exc)


async def _delete_all(engine: StorageEngine) -> list[str]:
    """Delete every key of ``engine`` (a few hundred at a time, so a log engine commits them
    together), then compact it; returns the keys."""
    keys = await engine.keys(0, 1)
    for i in range(0, len(keys), 512):
        async with trio.open_nursery() as nursery:
            for key in keys[i : i + 512]:
                nursery.start_soon(engine.delete, key)
    await engine.compact()
    return keys
