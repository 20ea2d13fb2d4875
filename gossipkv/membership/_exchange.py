"""One scuttlebutt exchange, both ends: SYN -> SYN_ACK -> ACK (-> ACK), bounded in bytes.

The SYN summarises the sender's view in bucket hashes (of each member's generation and newest
version; see :class:`ViewSummary`), so two peers that agree exchange two small messages and
nothing else. The receiver lists its digest entries for the buckets that differ (as many as
``max_digest_bytes`` holds, starting at a rotating bucket so each gets its turn, and a rotating
part of a bucket too big for what is left, so a joiner learns of everyone in turn); the initiator
pushes what the receiver lacks in those buckets and asks for what it lacks itself; the receiver
answers that last. Deltas fit ``max_delta_bytes``, unknown members first, then the stalest.
"""

from __future__ import annotations

from .._messages import Ack, DigestEntry, NodeDelta, Syn, SynAck
from ._intake import Intake
from ._state import Namespace, build_delta, digest_entry_size, wanted_digest
from ._table import MemberTable

#: The fewest bytes a digest entry encodes in (array head, empty name, three one-byte ints).
_SMALLEST_ENTRY = 5


class Exchange:
    """Builds and answers the messages of an exchange for one peer.

    Args:
      table: the members.
      intake: where what is received is vetted and applied.
    """

    def __init__(self, table: MemberTable, intake: Intake) -> None:
        self._t = table
        self._intake = intake
        #: The bucket count of the last SYN built (the replies refer to it).
        self._syn_buckets = 1
        self._rotation = 0

    def syn(self) -> Syn:
        """A SYN: this peer's own digest entry and the summary of its view."""
        t = self._t
        me = t.me
        self._syn_buckets = count = t.config.syn_buckets(len(t.namespaces))
        return Syn(t.node_id, me.generation, (me.digest(),), view=t.summary.buckets(count))

    def on_syn(self, syn: Syn, now: float) -> SynAck:
        """Answer a SYN: our entries of the buckets whose hashes differ (the sender then pushes
        what we lack and asks for what it lacks), and what the sender's digest shows it lacks."""
        t = self._t
        t.counters.syns_received += 1
        theirs = self._intake.digest(syn.digest)
        count = len(syn.view)
        mine = t.summary.buckets(count) if 0 < count <= 256 else ()
        differ = [b for b in range(len(mine)) if mine[b] != syn.view[b]]
        listed: list[DigestEntry] = []
        covered: list[int] = []
        if differ:
            # Only the differing buckets' members are looked at (the summary indexes them), and
            # digest entries are made only until the budget is spent: a joiner's SYN differs in
            # every bucket, and the budget holds a few hundred entries, not the whole view.
            namespaces = t.namespaces
            left = t.config.max_digest_bytes
            # Start at a rotating bucket, so a budget too small for every differing bucket
            # still covers each of them in turn.
            self._rotation += 1
            first = self._rotation % len(differ)
            for b in differ[first:] + differ[:first]:
                names = list(t.summary.members(count, b))
                entries: list[DigestEntry] = []
                size = 0
                for n in names:
                    e = namespaces[n].digest()
                    size += digest_entry_size(e)
                    if size > left:
                        break
                    entries.append(e)
                else:
                    left -= size
                    covered.append(b)
                    listed.extend(entries)
                    continue
                # Too big for what is left (a joiner's one-bucket summary, say): list a rotating
                # part of it; the sender learns of those members and compares them, but, not
                # told the bucket is whole, infers nothing about the rest.
                start = self._rotation % len(names)
                for n in names[start:] + names[:start]:
                    if left < _SMALLEST_ENTRY:
                        break  # nothing more can fit
                    e = namespaces[n].digest()
                    size = digest_entry_size(e)
                    if size <= left:
                        left -= size
                        listed.append(e)
                break
            if len(covered) < len(differ):
                t.counters.budget_truncations += 1
        lacking = {
            n: e
            for n, e in theirs.items()
            if (have := t.namespaces.get(n)) is not None
            and (
                e.generation < have.generation
                or (e.generation == have.generation and e.max_version < have.max_version)
            )
        }
        budget = t.config.max_delta_bytes - 16
        delta = (
            build_delta({n: t.namespaces[n] for n in lacking}, lacking, budget) if lacking else ()
        )
        return SynAck(tuple(listed), delta, tuple(sorted(covered)))

    def on_syn_ack(self, msg: SynAck, now: float, syn: Syn | None = None) -> Ack:
        """Apply the reply's delta; push what the replier lacks in the buckets it listed, and ask
        for what it knows better. ``syn`` is the SYN it answers (its bucket count)."""
        t = self._t
        self._intake.apply(msg.delta, now)
        theirs = self._intake.digest(msg.digest)
        count = len(syn.view) if syn is not None else self._syn_buckets
        covered = sorted({b for b in msg.buckets if 0 <= b < count})
        # In a covered bucket the replier listed every member it knows; elsewhere only the
        # listed members can be compared. Only those are looked at, not the whole view.
        namespaces = t.namespaces
        mine = {n: namespaces[n] for n in theirs if n in namespaces}
        for b in covered:
            for n in t.summary.members(count, b):
                mine[n] = namespaces[n]
        delta = build_delta(mine, theirs, t.config.max_delta_bytes - 16)
        self._note_truncation(delta, mine, theirs)
        wanted = wanted_digest(t.namespaces, theirs.values())
        return Ack(delta, wanted[: self._max_entries()])

    def on_ack(self, msg: Ack, now: float) -> Ack | None:
        """Apply an Ack's delta; answer what it asked for (``None``: it asked for nothing)."""
        t = self._t
        self._intake.apply(msg.delta, now)
        if not msg.wanted:
            return None
        theirs = {
            e.node_id: e
            for e in msg.wanted[: self._max_entries()]
            if not t.decisions.is_removed(e.node_id, e.generation)
        }
        mine = {n: ns for n, ns in t.namespaces.items() if n in theirs}
        delta = build_delta(mine, theirs, t.config.max_delta_bytes - 16)
        self._note_truncation(delta, mine, theirs)
        return Ack(delta) if delta else None

    def _max_entries(self) -> int:
        # The most digest entries one message may ask with (the smallest entry is 8 bytes).
        return self._t.config.max_digest_bytes // 8

    def _note_truncation(
        self,
        delta: tuple[NodeDelta, ...],
        mine: dict[str, Namespace],
        theirs: dict[str, DigestEntry],
    ) -> None:
        # Count exchanges where the budget kept back something the other side lacks (the next
        # round continues).
        lacking = sum(
            1
            for node_id, ns in mine.items()
            if (e := theirs.get(node_id)) is None
            or e.generation < ns.generation
            or (e.generation == ns.generation and e.max_version < ns.max_version)
        )
        namespaces = self._t.namespaces
        complete = sum(1 for nd in delta if nd.max_version >= namespaces[nd.node_id].max_version)
        if complete < lacking:
            self._t.counters.budget_truncations += 1
