"""The sans-IO membership protocol of one peer, behind one facade: :class:`Gossiper`.

The runtime feeds it messages and the current time (``now`` from ``trio.current_time()``;
``wall_ms`` from the one wall-clock reader) and sends what it returns; it never touches a socket,
a clock or the global RNG, which is what lets whole clusters run deterministically in one process.
The work is done in rooms, one concept each, around the shared :class:`MemberTable`:

* :mod:`._rounds` -- when to gossip and with whom (eager while there is news, probes always);
* :mod:`._exchange` -- one scuttlebutt exchange, both ends, bounded in bytes;
* :mod:`._intake` -- vetting and applying what gossip brings;
* :mod:`._detector` -- SWIM failure detection (probes, suspicions, verdicts, the pause guard);
* :mod:`._own` -- this peer's own entry: lifecycle, metadata, refutation of forgeries;
* :mod:`._duties` -- the emergent leader: convergence, majority, decisions.

Statuses: each member reports its own lifecycle (``joining -> up -> leaving -> left``) in its
namespace; reachability (``alive``/``suspect``/``down``) is this peer's opinion, from its probes
and the verdicts it adopted; ``removed`` is the leader's decision, quarantined so stale gossip
cannot resurrect an incarnation.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from .._messages import Ack, NodeDelta, Shutdown, Syn, SynAck
from .._partitions import PartitionTable
from ._config import GossipConfig
from ._detector import FailureDetector
from ._duties import LeaderDuties
from ._exchange import Exchange
from ._intake import Intake
from ._leader import Age, Decisions
from ._own import OwnEntry
from ._records import GossipCounters, MembershipEvent, MemberView, ProbeCounters
from ._rounds import RoundPlan, Rounds
from ._state import Namespace
from ._table import (
    META_PREFIX,
    MemberTable,
    SelfStatus,
    addr_of,
    gone,
    metadata_of,
    status_of,
    up_of,
)

#: Seconds between evaluations of the view and the leader's duties when nothing changed
#: (timeouts such as ``remove_after`` and ``leave_timeout`` are checked at this pace).
_FULL_EVALUATION = 1.0


class Gossiper:
    """One peer's membership state machine.

    Args:
      config: tuning.
      node_id: this peer's stable name.
      address: the ``host:port`` others reach it at.
      generation: this incarnation's generation (Generation Clock).
      seeds: addresses to contact when joining and to keep gossiping with so partitions heal.
      now: current ``trio.current_time()``.
      decisions: the leader decisions persisted by an earlier incarnation, if any.
      bootstrap: start a new cluster (grant ourselves the first ``up_number``) instead of joining.
      replaces: the dead member this new one takes over (``gossipkv peer --replace``): it holds
        exactly that member's partitions and is admitted once it has filled them.
    """

    def __init__(
        self,
        config: GossipConfig,
        *,
        node_id: str,
        address: str,
        generation: int,
        seeds: list[str],
        now: float,
        decisions: Decisions | None = None,
        bootstrap: bool = False,
        replaces: str | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.node_id = node_id
        self.address = address
        t = self._table = MemberTable(config, node_id, decisions or Decisions())
        t.wall_ms = generation
        self._own = OwnEntry(t, address, generation)
        self._detector = FailureDetector(t, now)
        self._intake = Intake(t, self._detector, self._own)
        self._exchange = Exchange(t, self._intake)
        self._rounds = Rounds(
            t,
            self._detector,
            self._exchange,
            [s for s in dict.fromkeys(seeds) if s != address],
            now,
        )
        self._duties = LeaderDuties(t, self._own, self._detector, now)
        self._evaluated: tuple[int, int, tuple[int, int]] | None = None
        self._next_full_evaluation = now
        self._reaped: tuple[tuple[int, int], int] | None = None
        self._started = now
        grant = t.decisions.admission(node_id)
        if grant is not None:
            self._duties.resume(grant)
        elif bootstrap:
            self._duties.bootstrap()
        elif replaces is not None:
            self._own.replaces = replaces
            t.write("replaces", replaces)

    # --- state the runtime reads and sets --------------------------------------------------------

    @property
    def decisions(self) -> Decisions:
        return self._table.decisions

    @property
    def counters(self) -> GossipCounters:
        return self._table.counters

    @property
    def probe_counters(self) -> ProbeCounters:
        return self._detector.counters

    @property
    def events(self) -> deque[MembershipEvent]:
        return self._table.events

    @property
    def refusal_notes(self) -> deque[tuple[str, str]]:
        return self._table.refusal_notes

    @property
    def seeds(self) -> list[str]:
        return self._rounds.seeds

    @property
    def decisions_dirty(self) -> bool:
        return self._table.decisions_dirty

    @decisions_dirty.setter
    def decisions_dirty(self, value: bool) -> None:
        self._table.decisions_dirty = value

    @property
    def generation(self) -> int:
        return self._own.generation

    @property
    def needs_reincarnation(self) -> bool:
        return self._own.needs_reincarnation

    @property
    def replaces(self) -> str | None:
        return self._own.replaces

    @property
    def hold_leave(self) -> bool:
        return self._own.hold_leave

    @hold_leave.setter
    def hold_leave(self, value: bool) -> None:
        self._own.hold_leave = value

    def on_news(self, callback: Callable[[], None]) -> None:
        """Have ``callback()`` called whenever this peer learns or writes something new."""
        self._table.on_news = callback

    @property
    def status(self) -> SelfStatus:
        return self._own.status

    @property
    def removed(self) -> bool:
        """Whether the leader removed this incarnation (or the admission it resumed)."""
        return self._table.voided(self.node_id, self._table.me)

    @property
    def resumed(self) -> bool:
        """Whether this incarnation resumed an admission of an earlier one (a restart)."""
        return self._own.resumed

    @property
    def up_number(self) -> int:
        return self._own.up_number

    @property
    def has_left(self) -> bool:
        """True once this peer's leave is complete and it may shut down."""
        return self.status == "left"

    @property
    def _self(self) -> Namespace:
        return self._table.me

    # --- gossip ----------------------------------------------------------------------------------

    def plan(self, now: float, rng: random.Random) -> RoundPlan:
        """What to send now and when to ask again (see :class:`Rounds`)."""
        return self._rounds.plan(now, rng, joining=self.status == "joining")

    def tick(self, now: float, rng: random.Random) -> list[tuple[str, Syn]]:
        """Plan now and return every exchange to start, as ``(address, Syn)`` pairs."""
        plan = self.plan(now, rng)
        if plan.syn is None:
            return []
        addrs = list(plan.gossip) + [a for _, a in plan.probes]
        return [(a, plan.syn) for a in dict.fromkeys(addrs)]

    def syn(self) -> Syn:
        """A SYN to start an exchange with (the runtime's indirect probes)."""
        return self._exchange.syn()

    def on_syn(self, syn: Syn, now: float) -> SynAck:
        return self._exchange.on_syn(syn, now)

    def on_syn_ack(self, msg: SynAck, now: float, syn: Syn | None = None) -> Ack:
        return self._exchange.on_syn_ack(msg, now, syn)

    def on_ack(self, msg: Ack, now: float) -> Ack | None:
        return self._exchange.on_ack(msg, now)

    def apply_delta(self, delta: tuple[NodeDelta, ...], now: float) -> None:
        self._intake.apply(delta, now)

    def _merge_decisions(self, raw: object) -> None:
        self._intake.merge_decisions(raw)

    def view_buckets(self, buckets: int | None = None) -> tuple[int, ...]:
        """The bucket hashes summarising every member's generation and newest version."""
        return self._table.summary.buckets(buckets or self.config.digest_buckets)

    # --- failure detection -----------------------------------------------------------------------

    def probe_helpers(self, node_id: str, rng: random.Random) -> list[str]:
        """Addresses of members to ask to probe ``node_id`` (its direct probe failed)."""
        return self._detector.helpers(node_id, rng)

    def probe_ok(self, node_id: str, now: float) -> None:
        self._detector.probe_ok(node_id, now)

    def probe_failed(self, node_id: str, started: float, now: float) -> None:
        self._detector.probe_failed(node_id, started, now)

    def on_shutdown(self, msg: Shutdown, now: float, *, sender: str) -> None:
        """A member announced it is stopping now: stop waiting for the detector.

        Only the member itself may say so, on its own connection (``sender`` is the name the
        connection proved: its TLS certificate, or without TLS its hello).
        """
        t = self._table
        if sender != msg.node_id:
            t.refuse("shutdown_not_own", f"{sender} announced that {msg.node_id} stops")
            return
        ns = t.namespaces.get(msg.node_id)
        peer = t.peers.get(msg.node_id)
        if ns is None or peer is None or ns.generation != msg.generation:
            return
        if not peer.shutdown_noticed:
            peer.shutdown_noticed = True
            peer.liveness = "down"
            peer.down_since = now
            if peer.left_since is None:
                peer.left_since = now
            t.event(now, "left", msg.node_id, msg.generation, "shutdown notice")

    def note_loop_lag(self, lag: float, now: float) -> None:
        """Report an event-loop stall measured by the runtime's watchdog."""
        if lag > self.config.local_pause_threshold:
            self._table.counters.pause_guards += 1
            self._detector.pause_guard(now)

    # --- periodic evaluation ---------------------------------------------------------------------

    def evaluate(self, now: float, wall_ms: int) -> None:
        """Pass verdicts, update own status and, when leader, make decisions."""
        t = self._table
        t.wall_ms = max(t.wall_ms, wall_ms)
        self._detector.evaluate(now)
        if self._stamp() == self._evaluated and now < self._next_full_evaluation:
            return  # nothing changed: the view, the leader and its duties are as they were
        self._next_full_evaluation = now + _FULL_EVALUATION
        self._duties.apply_decisions(now)
        self._own.evaluate(now, voided=t.voided(self.node_id, t.me))
        self._duties.publish_view()
        self._duties.track_view()
        self._duties.act(now, wall_ms)
        self._evaluated = self._stamp()

    def next_evaluation(self) -> float:
        """When :meth:`evaluate` next has something to do even without news."""
        out = min(self._next_full_evaluation, self._detector.next_deadline())
        leave = self._own.next_deadline()
        return out if leave is None else min(out, leave)

    def _stamp(self) -> tuple[int, int, tuple[int, int]]:
        t = self._table
        return (t.changes, t.me.max_version, t.decisions.epoch())

    # --- this peer's entry -----------------------------------------------------------------------

    def set_metadata(self, key: str, value: str | None) -> None:
        """Set (or with ``None`` delete) a user metadata key, visible at every peer.

        Raises:
          ValueError: key or value too long, or too many keys.
        """
        self._own.set_metadata(key, value)

    def start_leave(self, now: float) -> None:
        """Begin a graceful leave: announce ``leaving`` and wait for the leader's acknowledgement."""
        self._own.start_leave(now, self.config.leave_timeout)

    def next_generation(self, wall_ms: int) -> int:
        """The generation to rejoin with after a removal."""
        return self._own.next_generation(wall_ms)

    def reincarnate(self, generation: int, now: float) -> None:
        """Continue as a new incarnation (after this one was removed): rejoin as ``joining``."""
        self._own.reincarnate(generation, now)
        self._detector.republish()

    def set_pulling(self, partitions: list[int]) -> None:
        """Publish the partitions this member is still pulling (a transfer in flight), so every
        peer can tell which partitions have fewer than N full copies."""
        if self._table.me.get("pulling") != partitions:
            self._table.write("pulling", partitions)

    def set_reaped_upto(self, wall_ms: int) -> None:
        """Publish the write time of the newest tombstone this member reaped (wall-clock ms):
        a member back from a longer absence wipes its replica if anyone reaped a tombstone
        written after it was last alive (see ``gossipkv._reaper``)."""
        if wall_ms > 0 and self._table.me.get("reaped_upto") != wall_ms:
            self._table.write("reaped_upto", wall_ms)

    def mark_filled(self) -> None:
        """This replacement has filled every partition it took over: the leader may admit it."""
        if self._table.me.get("filled") is not True:
            self._table.write("filled", True)

    # --- what others published -------------------------------------------------------------------

    def reaped_upto(self) -> int:
        """The newest tombstone write time any known member published as reaped (0: none)."""
        t = self._table
        stamp = (t.changes, t.me.max_version)
        if self._reaped is not None and self._reaped[0] == stamp:
            return self._reaped[1]
        out = 0
        for ns in t.namespaces.values():
            value = ns.get("reaped_upto")
            if type(value) is int and value > out:
                out = value
        self._reaped = (stamp, out)
        return out

    def pulling(self, partition: int) -> set[str]:
        """The members still pulling ``partition`` (a transfer into them is in flight)."""
        out = set()
        for node_id, ns in self._table.namespaces.items():
            value = ns.get("pulling")
            if isinstance(value, list) and partition in value:
                out.add(node_id)
        return out

    def under_replicated(self) -> int:
        """Partitions with an owner that is unreachable from here or still pulling them."""
        table = self.table()
        if table is None:
            return 0
        reachable = self.reachable_members()
        pulling: dict[str, set[int]] = {}
        for node_id, ns in self._table.namespaces.items():
            value = ns.get("pulling")
            if isinstance(value, list):
                pulling[node_id] = {p for p in value if isinstance(p, int)}
        return sum(
            1
            for p, row in enumerate(table.owners)
            if len(row) < table.n or any(o not in reachable or p in pulling.get(o, ()) for o in row)
        )

    def is_gone(self, node_id: str) -> bool:
        """Whether ``node_id`` will not serve again: removed (and not admitted again), or it
        left (its decommission finished)."""
        t = self._table
        if node_id in t.decisions.removed and t.decisions.admission(node_id) is None:
            return True
        ns = t.namespaces.get(node_id)
        return ns is not None and node_id != self.node_id and gone(t.peers.get(node_id), ns)

    # --- the leader ------------------------------------------------------------------------------

    def leader(self) -> str | None:
        """The oldest member that is up (or leaving) and reachable from here."""
        return self._duties.leader()

    def converged(self) -> bool:
        """Every reachable up/leaving member publishes our view and none is suspect."""
        return self._duties.converged()

    def table(self) -> PartitionTable | None:
        """The newest partition table this peer accepted."""
        return self._table.decisions.table

    def operator_remove(self, node_id: str, now: float, wall_ms: int) -> tuple[int, bool]:
        """Remove ``node_id`` on an operator's word (``gossipkv remove``): its incarnation is
        removed and its partitions go to the members that remain, at once.

        The operator's word stands in for the majority the leader otherwise needs: with 2 of 5
        members left, the 3 dead ones can still be removed. It is refused while this peer (the
        leader) can reach the member, which must be stopped or declared dead first.

        Returns:
          The removed generation, and whether the survivors were short of a majority.

        Raises:
          ValueError: this peer is not the leader, the member is this peer or unknown, or it
            is reachable and not leaving.
        """
        d = self._table.decisions
        if node_id in d.removed and d.admission(node_id) is None:
            if node_id not in self._table.namespaces and self.leader() == self.node_id:
                return d.removed[node_id][0], False  # removed already
        generation = self._removable(node_id)
        minority = not self._duties.has_majority()
        self._duties.remove_now(node_id, generation, now, wall_ms)
        return generation, minority

    def _removable(self, node_id: str) -> int:
        """The generation to remove of a member an operator declares dead.

        Raises:
          ValueError: as :meth:`operator_remove`.
        """
        if node_id == self.node_id:
            raise ValueError("a member cannot remove itself: use gossipkv leave")
        if self.leader() != self.node_id:
            raise ValueError(f"only the leader can remove members (the leader is {self.leader()})")
        t = self._table
        ns = t.namespaces.get(node_id)
        grant = t.decisions.admission(node_id)
        if ns is None and grant is None:
            raise ValueError(f"no member named {node_id!r}")
        peer = t.peers.get(node_id)
        if ns is not None and peer is not None and peer.liveness != "down" and not gone(peer, ns):
            raise ValueError(
                f"{node_id} is reachable and {status_of(ns)}: stop it first (or use leave)"
            )
        return max(ns.generation if ns is not None else 0, grant.generation if grant else 0)

    def operator_replace(
        self, replaced: str, replacement: str, generation: int, now: float, wall_ms: int
    ) -> bool:
        """Hand every partition of dead member ``replaced`` to the new member ``replacement``
        (``gossipkv peer --replace``), moving no other partition: ``replaced`` is removed and
        ``replacement`` takes its place in every preference list. ``replacement`` is admitted
        (up, serving reads) only once it has filled those partitions from the other owners;
        until then reads go to them and its writes are hinted. Like an operator removal this
        needs no majority. Asking again (a replacement that restarted) changes nothing.

        Returns:
          Whether it was done now (False: it had been done already).

        Raises:
          ValueError: this peer is not the leader; ``replaced`` is unknown, this peer, or
            reachable and up; ``replacement`` is already a member.
        """
        d = self._table.decisions
        if self.leader() != self.node_id:
            raise ValueError(f"only the leader can replace members (the leader is {self.leader()})")
        if d.replacing.get(replacement, ("", -1))[0] == replaced and replaced in d.removed:
            d.replacing[replacement] = (replaced, max(generation, d.replacing[replacement][1]))
            self._table.decisions_dirty = True
            return False
        known = self._table.namespaces.get(replacement)
        if d.admission(replacement) is not None or (
            known is not None and status_of(known) != "joining"
        ):
            raise ValueError(f"{replacement} is already a member; it cannot replace {replaced}")
        removed_generation = self._removable(replaced)
        d.replacing[replacement] = (replaced, generation)
        table = self.table()
        if table is not None:
            # The replacement takes the replaced member's place in every preference list.
            owners = tuple(
                tuple(replacement if o == replaced else o for o in row) for row in table.owners
            )
            term, seq = d.next_epoch()
            d.table = PartitionTable(term, seq, table.n, owners)
        self._duties.remove_now(replaced, removed_generation, now, wall_ms)
        return True

    # --- views for the API -----------------------------------------------------------------------

    def members(self, now: float) -> list[MemberView]:
        """This peer's membership table (sorted by name), including removed incarnations."""
        t = self._table
        leader = self.leader()
        ranked = sorted(
            Age(up_of(ns), ns.generation, n)
            for n, ns in t.visible()
            if status_of(ns) in ("up", "leaving") and up_of(ns) > 0
        )
        rank = {age.node_id: i + 1 for i, age in enumerate(ranked)}
        rows: list[MemberView] = []
        for node_id, ns in sorted(t.namespaces.items()):
            status: str = status_of(ns)
            peer = t.peers.get(node_id)
            phi: float | None = None
            reachable = True
            if peer is not None:
                phi = self._detector.level(node_id, now)
                reachable = peer.liveness != "down"
                if gone(peer, ns):
                    status = "left"
                elif peer.liveness == "down":
                    status = "down"
            up = up_of(ns)
            rows.append(
                MemberView(
                    name=node_id,
                    address=addr_of(ns),
                    status=status,
                    reachable=reachable,
                    up_number=up or None,
                    age_rank=rank.get(node_id),
                    generation=ns.generation,
                    heartbeat=ns.heartbeat,
                    phi=phi,
                    metadata=metadata_of(ns),
                    is_leader=node_id == leader,
                    is_self=node_id == self.node_id,
                )
            )
        for node_id, (gen, _) in sorted(t.decisions.removed.items()):
            if node_id not in t.namespaces:
                rows.append(
                    MemberView(
                        node_id, None, "removed", False, None, None, gen, 0, None, {}, False, False
                    )
                )
        rows.sort(key=lambda r: r.name)
        return rows

    def member_generations(self) -> dict[str, int]:
        return {n: ns.generation for n, ns in self._table.namespaces.items()}

    def address_of(self, node_id: str) -> str | None:
        ns = self._table.namespaces.get(node_id)
        return None if ns is None else addr_of(ns)

    def announced_address(self, node_id: str) -> object:
        """The raw address value ``node_id`` gossips (unchecked: a cache key for callers that
        validated it once with :meth:`address_of`)."""
        ns = self._table.namespaces.get(node_id)
        return None if ns is None else ns.get("addr")

    def reachable_members(self) -> set[str]:
        """Names of the up/leaving members this peer can reach, itself included when up."""
        return {n for n, ns in self._table.visible() if status_of(ns) in ("up", "leaving")}

    def live_addresses(self) -> list[str]:
        """Addresses of the remote members this peer considers reachable (for shutdown notices)."""
        return sorted(
            a
            for n, ns in self._table.visible()
            if n != self.node_id and (a := addr_of(ns)) is not None
        )


__all__ = [
    "META_PREFIX",
    "GossipConfig",
    "GossipCounters",
    "Gossiper",
    "MemberView",
    "MembershipEvent",
    "RoundPlan",
    "replace",
]
