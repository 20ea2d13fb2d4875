"""What gossip may change here: deltas and digests, vetted, then applied (Idempotent Receiver).

:class:`Intake` is the only way gossip reaches the member table. It refuses what no honest member
could have sent (a generation far ahead of this peer's clock, a removed incarnation, leader
decisions that fail :meth:`Decisions.vet`), hands anything written about this very incarnation to
the own entry (to refute), applies the rest idempotently by version, and tells the failure
detector whenever a member's newest version rises or its published reports change.
"""

from __future__ import annotations

from .._messages import DigestEntry, NodeDelta
from ._detector import VERDICTS, FailureDetector
from ._leader import Decisions
from ._own import OwnEntry
from ._state import Namespace
from ._table import STRUCTURAL_KEYS, MemberTable, Peer, status_of, up_of


class Intake:
    """Vets and applies gossip to one peer's table.

    Args:
      table: the members.
      detector: told of newer versions and of members' reports.
      own: this peer's entry (it refutes what others claim of it).
    """

    def __init__(self, table: MemberTable, detector: FailureDetector, own: OwnEntry) -> None:
        self._t = table
        self._detector = detector
        self._own = own

    def digest(self, digest: tuple[DigestEntry, ...]) -> dict[str, DigestEntry]:
        """Index a received digest: entries of removed incarnations are dropped, entries of this
        incarnation it never wrote are refuted, newer heartbeats are noted (for display)."""
        t = self._t
        out: dict[str, DigestEntry] = {}
        for entry in digest:
            if t.decisions.is_removed(entry.node_id, entry.generation):
                continue
            out[entry.node_id] = entry
            if entry.node_id == t.node_id:
                if entry.generation == self._own.generation:
                    self._own.refute(entry.max_version, entry.heartbeat)
                continue
            ns = t.namespaces.get(entry.node_id)
            if (
                ns is not None
                and ns.generation == entry.generation
                and entry.heartbeat > ns.heartbeat
            ):
                ns.heartbeat = entry.heartbeat
        return out

    def apply(self, delta: tuple[NodeDelta, ...], now: float) -> None:
        for nd in delta:
            self._apply(nd, now)

    def _apply(self, nd: NodeDelta, now: float) -> None:
        t = self._t
        if nd.node_id == t.node_id:
            if nd.generation > self._own.generation:
                # Someone else runs under our name with a newer generation.
                t.counters.identity_conflicts += 1
            elif nd.generation == self._own.generation:
                self._own.refute(nd.max_version, nd.heartbeat)
            return
        if nd.generation > t.max_generation():
            t.refuse("generation_ahead", f"{nd.node_id} at generation {nd.generation}")
            return
        if t.decisions.is_removed(nd.node_id, nd.generation):
            t.counters.quarantined += 1
            # Its decisions are still facts: merging them lets a mutual removal resolve itself.
            for entry in nd.entries:
                if entry.key == "decisions":
                    self.merge_decisions(entry.value)
            return
        ns = t.namespaces.get(nd.node_id)
        if ns is None or nd.generation > ns.generation:
            if nd.floor != 0:
                t.counters.stale_ignored += 1
                return
            restarted = ns is not None
            if restarted:
                self._detector.forget(nd.node_id)
            ns = Namespace(nd.node_id, nd.generation)
            t.add(ns)
            # A new incarnation replaces the old one completely, local opinions included.
            t.peers[nd.node_id] = Peer()
            t.event(now, "restarted" if restarted else "joined", nd.node_id, nd.generation)
            t.learned()
        elif nd.generation < ns.generation:
            t.counters.stale_ignored += 1
            return
        before_status, before_up, before_version = status_of(ns), up_of(ns), ns.max_version
        if nd.floor <= ns.max_version:
            reports: object = None
            for entry in nd.entries:
                item = ns.entries.get(entry.key)
                if item is None or entry.version > item[1]:
                    ns.put(entry.key, entry.value, entry.version)
                    if entry.key in STRUCTURAL_KEYS:
                        t.structure += 1
                    if entry.key == "decisions":
                        self.merge_decisions(entry.value)
                    elif entry.key == VERDICTS:
                        reports = entry.value
            ns.raise_max(nd.max_version)
            t.counters.deltas_applied += 1
            if ns.max_version > before_version:
                t.learned()
                self._detector.advanced(nd.node_id, now)
            if reports is not None:
                claim = self._detector.reported(nd.node_id, reports, now)
                if claim is not None and self._own.refute_report(claim):
                    self._detector.counters.refuted += 1
                    self._detector.refuting()
        else:
            t.counters.stale_ignored += 1
        if nd.heartbeat > ns.heartbeat:
            ns.heartbeat = nd.heartbeat
        after_status = status_of(ns)
        if after_status != before_status:
            peer = t.peers[nd.node_id]
            if after_status == "left" and peer.left_since is None:
                peer.left_since = now
            t.event(now, after_status, nd.node_id, ns.generation)
        elif up_of(ns) != before_up and after_status == "up":
            t.event(now, "up", nd.node_id, ns.generation)

    def merge_decisions(self, raw: object) -> None:
        """Merge a leader-decisions record someone gossiped, once vetted."""
        t = self._t
        other = Decisions.from_plain(raw)
        if other is None:
            t.counters.bad_values += 1
            return
        reasons = t.decisions.vet(other, max_generation=t.max_generation(), seen=self.seen())
        for reason in reasons:
            t.refuse(reason, f"in a decisions record of epoch {other.epoch()}")
        if t.decisions.merge(other):
            t.decisions_dirty = True
            t.structure += 1
            t.learned()

    def seen(self) -> dict[str, int]:
        """The newest generation this peer has seen of each member."""
        t = self._t
        out = {n: g.generation for n, g in t.decisions.grants.items()}
        for node_id, ns in t.namespaces.items():
            out[node_id] = max(out.get(node_id, -1), ns.generation)
        return out
