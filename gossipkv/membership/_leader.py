"""Emergent Leader by age, and the leader's decisions (Generation Clock epochs).

Age is ``(up_number, generation, node_id)``; the smallest is the oldest. The leader is the oldest
member that is up (or leaving) and that this peer considers reachable: every peer computes it from
its own view, so there are no election messages. The few decisions a leader makes (who is up with
which ``up_number``, whose leave is finished, which incarnations are removed) are kept in
:class:`Decisions`, a record every peer merges from whatever it hears and persists. Conflicting
decisions about the same member are settled by epoch ``(term, seq)``: a peer that becomes leader
starts a term above every term it has seen, so a deposed leader's decisions never win.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from .._partitions import PartitionTable

# Counters taken from the wire stay far below 2**64 so that adding one never needs a bignum
# (which the codec refuses on the wire): larger values are treated as malformed.
MAX_COUNTER = 2**62
#: Terms and sequence numbers a record may claim: far below MAX_COUNTER, so whatever a record
#: claimed, a leader can still begin the next term (2**40 decisions last 35,000 years at 1,000 a
#: second). A record claiming more is forged or corrupt.
MAX_EPOCH = 2**40
#: How far one record may move the term (or, within a term, the sequence) past this peer's own.
#: A term rises by one per change of leader, a sequence by one per decision: a member that was
#: away can be behind by thousands, not by millions.
MAX_EPOCH_STEP = 2**20


class Age(NamedTuple):
    up_number: int
    generation: int
    node_id: str


class Grant(NamedTuple):
    generation: int
    up_number: int
    term: int
    seq: int


@dataclass(slots=True)
class Decisions:
    """The merged record of leader decisions (a join-semilattice: ``merge`` is idempotent)."""

    term: int = 0
    seq: int = 0
    grants: dict[str, Grant] = field(default_factory=dict)
    removed: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (generation, at_ms)
    exited: dict[str, int] = field(default_factory=dict)  # node -> generation whose leave is done
    table: PartitionTable | None = None  # the newest partition table (highest epoch wins)
    # replacement -> (the member it replaces, its generation when it asked): it holds the
    # replaced member's partitions, and is admitted once it has filled them.
    replacing: dict[str, tuple[str, int]] = field(default_factory=dict)

    def epoch(self) -> tuple[int, int]:
        return (self.term, self.seq)

    def next_epoch(self) -> tuple[int, int]:
        self.seq += 1
        return (self.term, self.seq)

    def begin_term(self) -> None:
        """Called by a peer that becomes leader: its decisions outrank every earlier term."""
        self.term += 1
        self.seq = 0

    def max_up_number(self) -> int:
        return max((g.up_number for g in self.grants.values()), default=0)

    def merge(self, other: Decisions) -> bool:
        """Fold ``other`` into this record; returns True if anything changed."""
        changed = False
        if other.epoch() > self.epoch():
            self.term, self.seq = other.term, other.seq
            changed = True
        for node, grant in other.grants.items():
            mine = self.grants.get(node)
            # Same generation: the newer epoch wins; on an equal epoch (two leaders that began the
            # same term) the larger up_number, so every peer settles on the same grant.
            if (
                mine is None
                or grant.generation > mine.generation
                or (
                    grant.generation == mine.generation
                    and (grant.term, grant.seq, grant.up_number)
                    > (mine.term, mine.seq, mine.up_number)
                )
            ):
                self.grants[node] = grant
                changed = True
        for node, (gen, at_ms) in other.removed.items():
            cur = self.removed.get(node)
            if cur is None or gen > cur[0]:
                self.removed[node] = (gen, at_ms)
                changed = True
        for node, gen in other.exited.items():
            if gen > self.exited.get(node, -1):
                self.exited[node] = gen
                changed = True
        for node, (old, gen) in other.replacing.items():
            mine_r = self.replacing.get(node)
            if mine_r is None or (gen, old) > (mine_r[1], mine_r[0]):
                self.replacing[node] = (old, gen)
                changed = True
        # The table last: whether it spans enough members depends on the grants, removals and
        # acknowledged leaves merged above. A leader publishes a leave's acknowledgement and the
        # table planned without the leaver in one record; checked first, that table was refused
        # (the leaver still counted as admitted) and never offered again, so a member kept the
        # old table and never pulled the leaver's partitions, and the leaver waited for it.
        if (
            other.table is not None
            and (self.table is None or other.table.epoch > self.table.epoch)
            and self.table_ok(other.table)
        ):
            self.table = other.table
            changed = True
        return changed

    def is_removed(self, node_id: str, generation: int) -> bool:
        cur = self.removed.get(node_id)
        return cur is not None and generation <= cur[0]

    def admission(self, node_id: str) -> Grant | None:
        """The grant that admitted ``node_id``, unless that incarnation was removed since or
        finished a graceful leave: a member restarted with its data dir resumes it (same
        ``up_number``, so the same age), a member without one joins anew."""
        grant = self.grants.get(node_id)
        if grant is None or self.is_removed(node_id, grant.generation):
            return None
        if self.exited.get(node_id, -1) >= grant.generation:
            return None
        return grant

    def admitted(self) -> set[str]:
        """Every member whose admission stands (see :meth:`admission`)."""
        return {n for n in self.grants if self.admission(n) is not None}

    def vet(
        self,
        other: Decisions,
        *,
        max_generation: int,
        seen: Mapping[str, int] | None,
    ) -> list[str]:
        """Drop from ``other``, a record received from a peer, what no honest leader could have
        decided, before it is merged; returns why, one reason per refusal (empty: all of it
        holds). Without authentication (TLS identities) a peer can still forge what is
        plausible; this keeps a forgery from doing damage that outlives it.

        * A record claiming an epoch near the counter limits (``epoch_limit``), or moving the
          term, or the sequence within this record's term, more than :data:`MAX_EPOCH_STEP`
          past this record's (``epoch_step``; not checked while this record has no term yet)
          is refused whole: ``other`` is emptied.
        * Grants, removals, finished leaves and replacements of a generation above
          ``max_generation`` (this peer's wall clock plus the allowed skew) are dropped
          (``generation_ahead``): a removal of generation 2**62 would quarantine every future
          incarnation of a member.
        * With ``seen`` (the newest generation this peer has seen of each member), a removal of
          an incarnation newer than any seen is lowered to the newest seen, or dropped if the
          member was never seen (``removal_unseen``): it quarantines what this peer knows of.
        * A table of another partition count or N than this record's, or naming a member that
          neither record admits nor lists as a replacement, is dropped (``table_invalid``).
        """
        epochs = [other.term, other.seq, *(v for g in other.grants.values() for v in g[2:])]
        if other.table is not None:
            epochs += [other.table.term, other.table.seq]
        reasons: list[str] = []
        if max(epochs) >= MAX_EPOCH:
            reasons.append("epoch_limit")
        elif self.term > 0 and (
            other.term > self.term + MAX_EPOCH_STEP
            or (other.term == self.term and other.seq > self.seq + MAX_EPOCH_STEP)
        ):
            reasons.append("epoch_step")
        if reasons:
            other.term = other.seq = 0
            other.grants.clear()
            other.removed.clear()
            other.exited.clear()
            other.replacing.clear()
            other.table = None
            return reasons

        def ahead(generation: int) -> bool:
            if generation > max_generation:
                reasons.append("generation_ahead")
                return True
            return False

        for node in [n for n, g in other.grants.items() if ahead(g.generation)]:
            del other.grants[node]
        for node in [n for n, gen in other.exited.items() if ahead(gen)]:
            del other.exited[node]
        for node in [n for n, (_, gen) in other.replacing.items() if ahead(gen)]:
            del other.replacing[node]
        for node, (gen, _) in list(other.removed.items()):
            if ahead(gen):
                del other.removed[node]
            elif seen is not None and gen > seen.get(node, -1):
                reasons.append("removal_unseen")
                if node in seen:
                    other.removed[node] = (seen[node], other.removed[node][1])
                else:
                    del other.removed[node]
        table = other.table
        if table is not None:
            known = {*self.grants, *other.grants, *self.replacing, *other.replacing}
            mine = self.table
            if (mine is not None and (table.q != mine.q or table.n != mine.n)) or not all(
                o in known for row in table.owners for o in row
            ):
                reasons.append("table_invalid")
                other.table = None
        return reasons

    def table_ok(self, table: PartitionTable) -> bool:
        """Whether ``table`` keeps every partition on ``min(N, admitted members)`` distinct
        owners: a table a lone restarted or cut-off member would make of itself alone (one owner
        per partition while others are admitted) is never published nor accepted."""
        need = min(table.n, len(self.admitted()))
        return all(len(row) >= need for row in table.owners)

    def prune(self, now_ms: int, ttl_ms: int) -> None:
        """Forget removals older than ``ttl_ms`` (the quarantine has long expired by then)."""
        for node, (_, at_ms) in list(self.removed.items()):
            if now_ms - at_ms > ttl_ms:
                del self.removed[node]

    def to_plain(self) -> dict[str, object]:
        return {
            "term": self.term,
            "seq": self.seq,
            "grants": {n: list(g) for n, g in sorted(self.grants.items())},
            "removed": {n: list(r) for n, r in sorted(self.removed.items())},
            "exited": dict(sorted(self.exited.items())),
            "table": None if self.table is None else self.table.to_plain(),
            "replacing": {n: list(r) for n, r in sorted(self.replacing.items())},
        }

    @classmethod
    def from_plain(cls, raw: object) -> Decisions | None:
        """Validate a record received from a peer or read from disk; ``None`` if malformed."""
        if not isinstance(raw, dict):
            return None
        term, seq = raw.get("term"), raw.get("seq")
        grants_raw, removed_raw, exited_raw = (
            raw.get("grants"),
            raw.get("removed"),
            raw.get("exited"),
        )
        if not (isinstance(term, int) and isinstance(seq, int) and _is_int(term) and _is_int(seq)):
            return None
        if not (
            isinstance(grants_raw, dict)
            and isinstance(removed_raw, dict)
            and isinstance(exited_raw, dict)
        ):
            return None
        out = cls(term=term, seq=seq)
        for node, g in grants_raw.items():
            if not (isinstance(node, str) and _int_list(g, 4)):
                return None
            out.grants[node] = Grant(*g)
        for node, r in removed_raw.items():
            if not (isinstance(node, str) and _int_list(r, 2)):
                return None
            out.removed[node] = (r[0], r[1])
        for node, gen in exited_raw.items():
            if not (isinstance(node, str) and _is_int(gen)):
                return None
            out.exited[node] = gen
        replacing_raw = raw.get("replacing", {})
        if not isinstance(replacing_raw, dict):
            return None
        for node, r in replacing_raw.items():
            if not (
                isinstance(node, str)
                and isinstance(r, list)
                and len(r) == 2
                and isinstance(r[0], str)
                and _is_int(r[1])
            ):
                return None
            out.replacing[node] = (r[0], r[1])
        table_raw = raw.get("table")
        if table_raw is not None:
            out.table = PartitionTable.from_plain(table_raw)
            if out.table is None:
                return None
        return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNTER


def _int_list(value: object, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(_is_int(v) for v in value)


def oldest(ages: Iterable[Age]) -> Age | None:
    """The oldest of ``ages`` (``None`` for none)."""
    return min(ages, default=None)


def view_hash(entries: Iterable[tuple[str, int, str, int]]) -> str:
    """Hash of what a peer sees: sorted ``(node_id, generation, status, up_number)`` tuples."""
    h = hashlib.blake2b(digest_size=8)
    for node_id, generation, status, up_number in sorted(entries):
        h.update(f"{node_id}\x00{generation}\x00{status}\x00{up_number}\x01".encode())
    return h.hexdigest()


def has_majority(reachable: int, of_view: int) -> bool:
    """Keep-majority: strictly more than half of the last converged view is reachable."""
    return of_view > 0 and reachable * 2 > of_view
