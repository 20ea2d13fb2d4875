"""The Emergent Leader's side of one peer: who leads, whether the view converged, and what the
leader decides (admissions, removals, acknowledged leaves, the partition table).

Every peer computes the leader from its own view: the oldest member (smallest ``Age``) that is up
or leaving and reachable from here, so there are no election messages. When this peer is that
member it publishes its decisions in its namespace (key ``decisions``): graceful leaves are
acknowledged at once; topology changes wait until the view converged (every reachable member
publishes the same ``view`` hash) and this peer reaches a majority of the last view seen whole
(keep-majority; an exact half holding the oldest member may act too). Operators may remove or
replace a dead member without that majority.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .._partitions import PartitionTable, plan
from ._detector import FailureDetector
from ._leader import MAX_COUNTER, Age, Grant, has_majority, view_hash
from ._own import OwnEntry
from ._table import MemberTable, gone, status_of, up_of


@dataclass(slots=True)
class _LeaderState:
    converged_view: frozenset[str] = field(default_factory=frozenset)
    was_leader: bool = False


class LeaderDuties:
    """Leadership, convergence and the leader's decisions for one peer.

    Args:
      table: the members.
      own: this peer's entry (its age, its promotion).
      detector: told when a removed member is forgotten.
      now: current ``trio.current_time()`` (``remove_after`` counts from here for members
        remembered but never heard from).
    """

    def __init__(
        self, table: MemberTable, own: OwnEntry, detector: FailureDetector, now: float
    ) -> None:
        self._t = table
        self._own = own
        self._detector = detector
        self._state = _LeaderState()
        self._started = now
        self._last_leader: str | None = None
        self._leader: tuple[tuple[int, int], str | None] | None = None
        #: A view hash computed but not yet published, since when this peer has it, and since
        #: when some view has waited.
        self._pending_view: tuple[str, float, float] | None = None

    # --- starting ----------------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Start a new cluster: grant ourselves the first ``up_number``."""
        d = self._t.decisions
        d.begin_term()
        up = d.max_up_number() + 1
        term, seq = d.next_epoch()
        d.grants[self._t.node_id] = Grant(self._own.generation, up, term, seq)
        self._t.decisions_dirty = True
        self._state.was_leader = True
        self._t.write("decisions", d.to_plain())
        self._own.promote(up, self._own.generation)

    def resume(self, grant: Grant) -> None:
        """Continue as the member an earlier incarnation was (restarted with its data dir): up at
        once with the same ``up_number``, so the leader and the partition table stay where they
        were, and nobody has to admit anybody after a whole-cluster restart. The new generation
        supersedes the old incarnation's ghosts. Until this peer has heard from a majority of the
        members it remembers, it makes no topology decision (see :meth:`track_view`)."""
        self._t.write("decisions", self._t.decisions.to_plain())
        self._state.converged_view = frozenset(self._t.decisions.admitted())
        self._own.promote(grant.up_number, grant.generation)

    # --- the view ---------------------------------------------------------------------------------

    def apply_decisions(self, now: float) -> None:
        """Forget the members whose incarnation the leader removed."""
        t = self._t
        for node_id, ns in list(t.namespaces.items()):
            if node_id != t.node_id and t.voided(node_id, ns):
                t.drop(node_id)
                self._detector.forget(node_id)
                t.event(now, "removed", node_id, ns.generation)

    def publish_view(self, now: float) -> None:
        """Publish the hash of this peer's view: the first one at once, a new one once it has
        held still for half a round, or once views have kept moving for five rounds."""
        # Joiners are left out: convergence is about the members, and a join storm would
        # otherwise change every view each time any peer hears of one more joiner, so the
        # leader, which admits on convergence, would wait for every peer to know every joiner
        # (then again for their admission to spread) before admitting anyone.
        entries = [
            (n, ns.generation, status, up_of(ns))
            for n, ns in self._t.visible()
            if (status := status_of(ns)) != "joining"
        ]
        digest = view_hash(entries)
        published = self._t.me.get("view")
        if digest == published:
            self._pending_view = None
            return
        # A view that is still moving (a join storm: members turn up one after another) is not
        # published at each step: every publication is news that every peer must hear of, and
        # at a thousand members those hashes crowded out the changes themselves.
        pending = self._pending_view
        if pending is None or pending[0] != digest:
            first = now if pending is None else pending[2]
            self._pending_view = (digest, now, first)
        if published is not None and now < self.view_due():
            return
        self._pending_view = None
        self._t.write("view", digest)

    def _round(self) -> float:
        return self._t.config.gossip_interval

    def view_due(self) -> float:
        """When the view computed last is to be published (``inf``: none waits)."""
        pending = self._pending_view
        if pending is None:
            return math.inf
        return min(pending[1] + self._round() / 2, pending[2] + 5 * self._round())

    @property
    def led_last(self) -> bool:
        """Whether this peer found itself the leader at its last :meth:`act`."""
        return self._last_leader == self._t.node_id

    def leader(self) -> str | None:
        """The oldest member that is up (or leaving) and reachable from here."""
        t = self._t
        # Asked at every evaluation and by the data path: it reads only what the table's
        # structure counter covers (liveness, status, up, generation), so it is cached on it.
        stamp = (t.structure, t.me.max_version)
        if self._leader is not None and self._leader[0] == stamp:
            return self._leader[1]
        best: Age | None = None
        for node_id, ns in t.visible():
            up = up_of(ns)
            if status_of(ns) in ("up", "leaving") and up > 0:
                age = Age(up, ns.generation, node_id)
                if best is None or age < best:
                    best = age
        leader = None if best is None else best.node_id
        self._leader = (stamp, leader)
        return leader

    def converged(self) -> bool:
        """Every reachable up/leaving member publishes our view and none is suspect; and our
        view is the one we publish (a view that moved here and waits to be published is no
        convergence, whatever the others show)."""
        if self._pending_view is not None:
            return False
        t = self._t
        mine = t.me.get("view")
        for node_id, ns in t.visible():
            if status_of(ns) not in ("up", "leaving"):
                continue
            if node_id != t.node_id and (
                t.peers[node_id].liveness == "suspect" or ns.get("view") != mine
            ):
                return False
        return True

    def track_view(self) -> None:
        """Remember the up/leaving members as the majority denominator, but only while every one
        of them is reachable: a view taken during a partition would let a minority count
        itself (and its new joiners) as a majority. A member whose admission stands but who has
        not been heard from yet (after a restart) counts as unreachable."""
        t = self._t
        members = frozenset(
            n
            for n, ns in t.namespaces.items()
            if status_of(ns) in ("up", "leaving") and not gone(t.peers.get(n), ns)
        )
        unheard = t.decisions.admitted() - set(t.namespaces)
        if not unheard and all(n == t.node_id or t.peers[n].liveness == "alive" for n in members):
            self._state.converged_view = members

    def has_majority(self) -> bool:
        t = self._t
        view = self._state.converged_view
        reachable = sum(
            1 for n in view if n == t.node_id or (n in t.peers and t.peers[n].liveness != "down")
        )
        if has_majority(reachable, len(view)):
            return True
        # An exact half may act only if it holds the oldest member of that view (keep-oldest).
        ages = [
            Age(up_of(ns), ns.generation, n)
            for n in view
            if (ns := t.namespaces.get(n)) is not None
        ]
        mine = Age(self._own.up_number, self._own.generation, t.node_id)
        return reachable * 2 == len(view) and min(ages, default=None) == mine

    # --- the leader's decisions --------------------------------------------------------------------

    def act(self, now: float, wall_ms: int) -> None:
        """Note a change of leader; when this peer leads, make the decisions that are due."""
        t = self._t
        leader = self.leader()
        if leader != self._last_leader:
            self._last_leader = leader
            t.event(now, "leader", leader or "", 0, "no leader" if leader is None else "")
        if leader != t.node_id:
            self._state.was_leader = False
            return
        d = t.decisions
        changed = False
        if not self._state.was_leader:
            self._state.was_leader = True
            d.begin_term()
            changed = True
        # Acknowledge graceful leaves at once (no gate: the member is going anyway). The leaver
        # stays until its data is handed off to the owners of the table planned without it (its
        # runtime holds it); acknowledged, it no longer counts among the members a table must
        # span, so that table can be published.
        for node_id, ns in t.namespaces.items():
            if status_of(ns) == "leaving" and d.exited.get(node_id, -1) < ns.generation:
                d.next_epoch()
                d.exited[node_id] = ns.generation
                changed = True
        # Topology changes (admissions, removals) need convergence and a majority of the last
        # view that was seen whole; a minority side freezes (keep-majority).
        if self.converged() and self.has_majority():
            changed |= self._admit()
            changed |= self._remove_gone(now, wall_ms)
            changed |= self.plan_partitions()
        if changed:
            t.decisions_dirty = True
            t.write("decisions", d.to_plain())

    def _admit(self) -> bool:
        t = self._t
        d = t.decisions
        changed = False
        published = max((up_of(ns) for ns in t.namespaces.values()), default=0)
        for node_id, ns in sorted(t.namespaces.items()):
            peer = t.peers.get(node_id)
            if status_of(ns) != "joining" or peer is None or peer.liveness != "alive":
                continue
            grant = d.grants.get(node_id)
            if grant is not None and grant.generation >= ns.generation:
                continue
            if node_id in d.replacing and ns.get("filled") is not True:
                continue  # a replacement serves once it holds what it took over
            up = max(d.max_up_number(), published) + 1
            if up >= MAX_COUNTER:
                continue
            term, seq = d.next_epoch()
            d.grants[node_id] = Grant(ns.generation, up, term, seq)
            changed = True
        return changed

    def plan_partitions(self) -> bool:
        """Publish a new partition table when the up members changed (leaving ones excluded).

        A member that restarted under the same name rejoins as ``joining`` with a new generation;
        while the table still lists it (it was never removed) it keeps its place, so a restart
        moves no replica (its old incarnation, down, was kept in the table too).
        """
        t = self._t
        d = t.decisions
        listed = {o for row in d.table.owners for o in row} if d.table else set()
        members = [
            n
            for n, ns in t.namespaces.items()
            if (status_of(ns) == "up" or (status_of(ns) == "joining" and n in listed))
            and not gone(t.peers.get(n), ns)
        ]
        # Admitted members not heard from since this peer (re)started keep their place, as a
        # member that is down does, until they are removed; so does a replacement still filling.
        members += sorted(d.admitted() - set(t.namespaces))
        members += sorted(
            p for p in d.replacing if p in listed and p not in members and d.admission(p) is None
        )
        owners = plan(
            members,
            partitions=d.table.q if d.table else t.config.partitions,
            replicas=d.table.n if d.table else t.config.replicas,
            previous=d.table,
        )
        if d.table is not None and owners == d.table.owners:
            return False
        n = d.table.n if d.table else t.config.replicas
        candidate = PartitionTable(d.term, d.seq + 1, n, owners)
        if not d.table_ok(candidate):
            return False  # fewer members in reach than the table must span: keep the old one
        term, seq = d.next_epoch()
        d.table = PartitionTable(term, seq, n, owners)
        return True

    def next_deadline(self) -> float:
        """When a removal this peer would make as leader falls due without any other change
        (``inf``: none): a member down or gone ``remove_after`` ago, or, ``remove_after`` after
        this peer started, the admitted members it never heard from."""
        t = self._t
        if self.leader() != t.node_id:
            return math.inf
        remove_after = t.config.remove_after
        out = math.inf
        if t.decisions.admitted() - set(t.namespaces):
            out = self._started + remove_after
        for node_id, peer in t.peers.items():
            since = peer.left_since if gone(peer, t.namespaces[node_id]) else peer.down_since
            if since is not None:
                out = min(out, since + remove_after)
        return out

    def _remove_gone(self, now: float, wall_ms: int) -> bool:
        t = self._t
        d = t.decisions
        remove_after = t.config.remove_after
        changed = False
        if now - self._started >= remove_after:
            # Members this peer remembers as admitted but has not heard from since it restarted
            # (nor has anyone it gossips with): gone for good, like a member down that long.
            for node_id in sorted(d.admitted() - set(t.namespaces)):
                d.next_epoch()
                d.removed[node_id] = (d.grants[node_id].generation, wall_ms)
                changed = True
        for node_id, peer in list(t.peers.items()):
            ns = t.namespaces[node_id]
            since = peer.left_since if gone(peer, ns) else peer.down_since
            if since is None or now - since < remove_after:
                continue
            d.next_epoch()
            d.removed[node_id] = (ns.generation, wall_ms)
            changed = True
        if changed:
            d.prune(wall_ms, t.config.tombstone_ttl_ms)
        return changed

    def remove_now(self, node_id: str, generation: int, now: float, wall_ms: int) -> None:
        """Remove an incarnation on an operator's word (see ``Gossiper.operator_remove``)."""
        t = self._t
        d = t.decisions
        d.next_epoch()
        d.removed[node_id] = (generation, wall_ms)
        self.apply_decisions(now)
        # The members in reach are the new whole: later decisions count a majority of them.
        self._state.converged_view = frozenset(
            n for n, ns in t.visible() if status_of(ns) in ("up", "leaving")
        )
        self.plan_partitions()
        t.decisions_dirty = True
        t.write("decisions", d.to_plain())
