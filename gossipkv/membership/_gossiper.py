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
* :mod:`._duties` -- the emergent leader: convergence, majority, decisions;
* :mod:`._operator` -- removals and replacements on an operator's word;
* :mod:`._progress` -- replica progress members publish for the data path.

Statuses: each member reports its own lifecycle (``joining -> up -> leaving -> left``) in its
namespace; reachability (``alive``/``suspect``/``down``) is this peer's opinion, from its probes
and the verdicts it adopted; ``removed`` is the leader's decision, quarantined so stale gossip
cannot resurrect an incarnation.
"""

from __future__ import annotations

import math
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
from ._leader import Decisions
from ._operator import OperatorActions
from ._own import OwnEntry
from ._progress import ReplicaProgress
from ._records import GossipCounters, MembershipEvent, MemberView, ProbeCounters
from ._rounds import RoundPlan, Rounds
from ._state import Namespace
from ._table import (
    META_PREFIX,
    MemberTable,
    SelfStatus,
    addr_of,
    status_of,
)


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
        self._operator = OperatorActions(t, self._duties)
        self._progress = ReplicaProgress(t)
        self._evaluated: tuple[int, int, tuple[int, int]] | None = None
        #: When the view and the leader's duties must be looked at again without any change.
        self._next_full_evaluation = now
        self._reachable: tuple[tuple[int, int], set[str]] | None = None
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
    def local_health(self) -> int:
        """Lifeguard's local health score: 0 when this peer keeps up (see the detector)."""
        return self._detector.awareness

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
        if value != self._own.hold_leave:
            self._own.hold_leave = value
            self._table.changes += 1  # the leave may finish now: evaluate again
            self._table.structure += 1

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

    # --- failure detection -----------------------------------------------------------------------

    def probe_helpers(
        self, node_id: str, rng: random.Random, connected: Callable[[str], bool]
    ) -> list[str]:
        """Addresses of members to ask to probe ``node_id`` (its direct probe failed), those
        this peer is ``connected`` with first."""
        return self._detector.helpers(node_id, rng, connected)

    def missed_nacks(self) -> None:
        """None of the members asked to try a failed probe answered at all: this peer may be
        the slow one, and probes more slowly for a while (Lifeguard's local health)."""
        self._detector.missed_nacks()

    def probe_ok(self, node_id: str, now: float) -> None:
        self._detector.probe_ok(node_id, now)

    def probe_failed(self, node_id: str, started: float, now: float, *, refused: bool) -> None:
        self._detector.probe_failed(node_id, started, now, refused=refused)

    def lost_contact(self, node_id: str) -> None:
        """This peer's connection with member ``node_id`` broke: probe it soon."""
        self._detector.lost_contact(node_id)

    def probe_inconclusive(self, node_id: str) -> None:
        self._detector.probe_inconclusive(node_id)

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

    def probe_timeout(self) -> float:
        """How long one probe attempt waits now (longer while this peer is slow)."""
        return self._detector.probe_timeout()

    def note_loop_lag(self, lag: float, now: float) -> None:
        """Report the event-loop lag measured by the runtime's watchdog (a stall above
        ``local_pause_threshold``; a slow peer above a tenth of a second)."""
        self._detector.note_lag(lag)
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
        self._duties.apply_decisions(now)
        self._own.evaluate(now, voided=t.voided(self.node_id, t.me))
        self._duties.publish_view(now)
        self._duties.track_view()
        self._duties.act(now, wall_ms)
        self._evaluated = self._stamp()
        # Without a change, only a deadline can give the view or the duties more to do.
        leave = self._own.next_deadline()
        self._next_full_evaluation = min(
            self._duties.next_deadline(),
            self._duties.view_due(),
            math.inf if leave is None else leave,
        )

    def next_evaluation(self) -> float:
        """When :meth:`evaluate` next has something to do even without news (``inf``: not
        until something changes)."""
        return min(self._next_full_evaluation, self._detector.next_deadline())

    def _stamp(self) -> tuple[int, int, tuple[int, int]]:
        t = self._table
        # Only the leader reads what members publish beyond the table's structure (their view
        # hashes, to see convergence): any other member looks again only when the structure
        # moved, not for every view hash learned (in a large cluster, most of what it learns).
        changes = t.changes if self._duties.led_last else t.structure
        return (changes, t.me.max_version, t.decisions.epoch())

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

    # --- what members publish for the data path (see ReplicaProgress) ----------------------

    def set_pulling(self, partitions: list[int]) -> None:
        self._progress.set_pulling(partitions)

    def set_reaped_upto(self, wall_ms: int) -> None:
        self._progress.set_reaped_upto(wall_ms)

    def mark_filled(self) -> None:
        self._progress.mark_filled()

    def reaped_upto(self) -> int:
        return self._progress.reaped_upto()

    def pulling(self, partition: int) -> set[str]:
        return self._progress.pulling(partition)

    def under_replicated(self) -> int:
        return self._progress.under_replicated(self.reachable_members())

    def is_gone(self, node_id: str) -> bool:
        return self._progress.is_gone(node_id)

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
        """Remove ``node_id`` on an operator's word (see :meth:`OperatorActions.remove`)."""
        return self._operator.remove(node_id, now, wall_ms)

    def operator_replace(
        self, replaced: str, replacement: str, generation: int, now: float, wall_ms: int
    ) -> bool:
        """Hand a dead member's partitions to a new one (see :meth:`OperatorActions.replace`)."""
        return self._operator.replace(replaced, replacement, generation, now, wall_ms)

    # --- views for the API -----------------------------------------------------------------------

    def members(self, now: float) -> list[MemberView]:
        """This peer's membership table (sorted by name), including removed incarnations."""
        return self._table.rows(self.leader(), lambda n: self._detector.level(n, now))

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
        t = self._table
        # The data path asks for every request it plans: recomputed only after a change.
        stamp = (t.structure, t.me.max_version)
        if self._reachable is None or self._reachable[0] != stamp:
            members = {n for n, ns in t.visible() if status_of(ns) in ("up", "leaving")}
            self._reachable = (stamp, members)
        return set(self._reachable[1])

    def member_addresses(self) -> list[str]:
        """Addresses of every remote member this peer knows of, reachable or not, sorted (what
        a restart rejoins through): the addresses :meth:`members` lists, without building its
        rows (a peer persists them at every change of the decisions)."""
        node_id = self.node_id
        return sorted(
            {
                a
                for n, ns in self._table.namespaces.items()
                if n != node_id and (a := addr_of(ns)) is not None
            }
        )

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
