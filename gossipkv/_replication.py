"""The coordinator's side of a replicated get, put and delete, with no I/O (sans-IO).

The runtime (:class:`gossipkv._kv.KeyValueService`) asks this module where a key's copies go,
how many answers a request needs, what the answers add up to and which replicas a read must
repair. It sends the messages, keeps the deadlines and feeds the answers back; nothing here
waits, reads a clock or touches a socket, so the same logic serves the fast in-reader path (a
reply handled in the connection's reader) and the awaitable API (a task that waits), and it is
tested on its own like the membership core.

Patterns: Quorum (R/W of the N owners), sloppy quorum with hinted handoff (an unreachable owner
is stood in for by the next reachable member of the ring, which keeps a hint for it), Request
Waiting List (:class:`Tally`: the answers to one request, collected as they come), read repair
(every replica that answered something older than the merged result is sent the result).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final

from . import _dvv
from ._dvv import DVVSet, Entry, Sibling
from ._errors import ClusterNotReady, InvalidArgument, QuorumNotReached, Unavailable
from ._messages import KvPut
from ._partitions import PartitionTable

Clock = DVVSet[Sibling]
#: A replica a request goes to: ``(member, owner)``, where ``owner`` names the unreachable owner
#: the member stands in for (it keeps a hint), or is ``""`` for an owner itself.
Target = tuple[str, str]


# --- where a key goes ------------------------------------------------------------------------------


def preference_list(
    table: PartitionTable | None, key: str, reachable: Collection[str], *, sloppy: bool
) -> tuple[list[Target], int]:
    """The sloppy preference list of ``key``: its targets and N.

    Reachable owners come first, in table order. With ``sloppy``, each unreachable owner is
    stood in for by the next reachable non-owner, walking the ring of members from the key's
    partition, so every peer picks the same stand-in for the same owner.

    Raises:
      ClusterNotReady: no partition table yet.
      Unavailable: the key's partition has no owner (a table that was never valid).
    """
    if table is None or not table.owners:
        raise ClusterNotReady("the cluster has no partition table yet; retry shortly")
    p = _dvv.partition_of(key, table.q)
    owners = table.owners[p]
    if not owners:
        raise Unavailable(f"partition {p} of {key!r} has no owner in the table")
    out: list[Target] = []
    missing: list[str] = []
    for o in owners:  # one loop, not two comprehensions: this runs for every request
        if o in reachable:
            out.append((o, ""))
        else:
            missing.append(o)
    if missing and sloppy:
        members = sorted({m for row in table.owners for m in row} | set(reachable))
        start = p % len(members)
        ring = members[start:] + members[:start]
        fallbacks = [m for m in ring if m not in owners and m in reachable]
        out.extend(zip(fallbacks, missing, strict=False))
    return out, len(owners)


def check_count(value: object, what: str) -> None:
    """``r`` or ``w`` as a caller gave it: 0 (the default) or a positive int.

    Raises:
      InvalidArgument: anything else (a bool, a float, a negative number).
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{what} must be 0 (the default) or 1..N, got {value!r}")


def quorum_size(asked: object, n: int, what: str, default: int) -> int:
    """How many replicas a request needs: ``asked`` (``r`` or ``w``), or ``default`` for 0,
    never more than N.

    Raises:
      InvalidArgument: ``asked`` is not 0 or 1..N.
    """
    check_count(asked, what)
    assert isinstance(asked, int)
    if asked == 0:
        return min(default, n)
    if not 1 <= asked <= n:
        raise InvalidArgument(f"{what} must be between 1 and N={n}, got {asked}")
    return asked


def read_plan(
    targets: list[Target], need: int, filling: Collection[str]
) -> tuple[list[str], set[str] | None]:
    """Who a read asks, and whose answers count toward R.

    Every target is asked. Members still pulling the key's partition (``filling``) may hold
    less than the others: their answers still merge in, but R is counted among the others when
    enough of those are asked (``None``: every answer counts).

    Raises:
      QuorumNotReached: fewer targets than R.
    """
    if len(targets) < need:
        raise QuorumNotReached(len(targets), need)
    asked = [m for m, _ in targets]
    if filling:
        settled = {m for m in asked if m not in filling}
        if len(settled) >= need:
            return asked, settled
    return asked, None


@dataclass(frozen=True, slots=True)
class PutPlan:
    """A put that passed every check: what to store and where its copies go.

    Attributes:
      key: the key written.
      sibling: the value (or tombstone) with its metadata (``rid``, ``ts``).
      ctx: the causal context the client sent, decoded (``None``: a blind write).
      size: the value's encoded size (0 for a tombstone).
      rid: the request id (``client:seq``) a retry is recognised by, or ``""``.
      targets: the preference list when planned.
      need: W.
      hint_for: the owner this peer stands in for (it keeps a hint), or ``""``.
      forward_to: the replica to hand the put to when this peer is none, or ``""``.
      request: the request as the client sent it (for forwarding).
      coordinator: the member that planned it (this peer).
      started: when the put began (its latency counts from here).
    """

    key: str
    sibling: Sibling
    ctx: dict[str, int] | None
    size: int
    rid: str
    targets: list[Target]
    need: int
    hint_for: str
    forward_to: str
    request: KvPut
    coordinator: str
    started: float = 0.0

    @property
    def others(self) -> list[Target]:
        """The targets the coordinator replicates to after storing the put itself."""
        return [(m, hint) for m, hint in self.targets if m != self.coordinator]


def plan_put(
    request: KvPut,
    *,
    node_id: str,
    ctx: dict[str, int] | None,
    size: int,
    targets: list[Target],
    n: int,
    default_w: int,
    stamp: Callable[[], int] | None,
    started: float,
) -> PutPlan:
    """Route a checked put: where it runs and what sibling it writes.

    A peer that is no replica of the key forwards the put to the first target (unless it was
    forwarded already: then it runs it where it is). A peer standing in for an unreachable
    owner keeps a hint. ``stamp`` (a hybrid-clock reading) is taken when the sibling needs one:
    a tombstone's stamp is its age for reaping, and ``last_write_wins`` orders writes by it.

    Raises:
      InvalidArgument: ``w`` outside 0 or 1..N.
      Unavailable: no target is reachable.
    """
    need = quorum_size(request.w, n, "w", default_w)
    if not targets:
        raise Unavailable(f"no replica of {request.key!r} is reachable")
    hint_for = forward_to = ""
    for m, h in targets:
        if m == node_id:
            hint_for = h
            break
    else:  # this peer is no replica of the key
        if not request.forwarded:
            forward_to = targets[0][0]
    rid = f"{request.client_id}:{request.seq}" if request.client_id else ""
    meta: dict[str, object] = {"rid": rid} if rid else {}
    if stamp is not None and not forward_to:
        meta["ts"] = stamp()
    sibling = Sibling.deleted(meta) if request.delete else Sibling(request.value, False, meta)
    return PutPlan(
        request.key,
        sibling,
        ctx,
        size,
        rid,
        targets,
        need,
        hint_for,
        forward_to,
        request,
        node_id,
        started,
    )


# --- collecting answers ----------------------------------------------------------------------------


class Progress:
    """What one answer (or failure) newly completed in a :class:`Tally`: bits of an int.

    Plain int bits, not an ``enum.Flag``: a Flag's ``|`` and ``in`` cost a dozen Python calls
    per request on the data path. Test a bit with ``progress & Progress.ENOUGH``.
    """

    NONE: Final = 0
    #: ``need`` answers that count arrived, or every replica answered or failed: the caller can
    #: be told (the result, or how few answered).
    ENOUGH: Final = 1
    #: Every replica answered or failed: the request's memory can go, and a read's repairs run.
    DONE: Final = 2


class Tally:
    """The answers to one request sent to several replicas (a Request Waiting List).

    Feed it :meth:`answered` and :meth:`failed` in any order; each returns what it newly
    completed, exactly once per request: ``ENOUGH`` and then (or at once too) ``DONE``. An
    answer from a member not asked, or a second one from the same member, changes nothing.
    With ``need`` 0 or nobody asked, :meth:`check` completes it.
    """

    __slots__ = ("counted", "done", "enough", "need", "pending", "replies")

    def __init__(self, members: Collection[str], need: int, counted: set[str] | None = None):
        self.pending = set(members)
        self.replies: dict[str, Clock | None] = {}
        self.need = need
        #: When set, only these members' answers count toward ``need`` (see :func:`read_plan`).
        self.counted = counted
        self.enough = False
        self.done = False

    def count(self) -> int:
        """Answers that count toward ``need``."""
        if self.counted is None:
            return len(self.replies)
        return sum(1 for m in self.replies if m in self.counted)

    def answered(self, member: str, clock: Clock | None) -> int:
        if member not in self.pending:
            return Progress.NONE
        self.pending.discard(member)
        self.replies[member] = clock
        return self.check()

    def failed(self, member: str) -> int:
        if member not in self.pending:
            return Progress.NONE
        self.pending.discard(member)
        return self.check()

    def check(self) -> int:
        out = Progress.NONE
        if not self.enough and (not self.pending or self.count() >= self.need):
            self.enough = True
            out = Progress.ENOUGH
        if not self.pending and not self.done:
            self.done = True
            out |= Progress.DONE
        return out


# --- what the answers add up to --------------------------------------------------------------------


def resolve(clock: Clock, *, last_write_wins: bool) -> Clock:
    """Under ``last_write_wins``, every sibling but the newest (by HLC stamp, then actor) is
    dropped; otherwise ``clock`` as it is."""
    if not last_write_wins or _dvv.size(clock) <= 1:
        return clock
    best: tuple[tuple[int, str], str, Sibling] | None = None
    for e in clock.entries:
        for sib in e.values:
            ts = sib.meta.get("ts")
            rank = (ts if isinstance(ts, int) else 0, e.actor)
            if best is None or rank > best[0]:
                best = (rank, e.actor, sib)
    if best is None:
        return clock
    _, actor, winner = best
    return DVVSet(
        tuple(
            Entry(e.actor, e.counter, (winner,) if e.actor == actor else ()) for e in clock.entries
        ),
        (),
    )


def merge(replies: dict[str, Clock | None], *, last_write_wins: bool = False) -> Clock | None:
    """The ``sync`` of every clock received (``None`` when every replica said not-found)."""
    clocks = [c for c in replies.values() if c is not None]
    if not clocks:
        return None
    first = clocks[0]
    for c in clocks:  # a loop, not all(generator): this runs twice for every read
        if first.anonymous or not _dvv.equal(c, first):
            return resolve(_dvv.sync_all(clocks), last_write_wins=last_write_wins)
    # The usual case: every replica holds the same version.
    return resolve(first, last_write_wins=last_write_wins)


def read_result(tally: Tally, *, last_write_wins: bool = False) -> Clock | None:
    """A read's merged clock once :attr:`Tally.enough`.

    Raises:
      QuorumNotReached: fewer than R counted answers.
    """
    if tally.count() < tally.need:
        raise QuorumNotReached(tally.count(), tally.need)
    return merge(tally.replies, last_write_wins=last_write_wins)


def stale_replicas(
    replies: dict[str, Clock | None], *, last_write_wins: bool = False
) -> tuple[Clock | None, list[str]]:
    """Read repair's decision, once every replica of a read answered or failed: the merged
    clock, and the members that answered something else (not-found included). Members that
    failed are not repaired: they did not say what they hold."""
    final = merge(replies, last_write_wins=last_write_wins)
    if final is None:
        return None, []
    return final, [m for m, c in replies.items() if c is None or not _dvv.equal(c, final)]


def write_acks(tally: Tally, need: int) -> int:
    """The copies a write holds once :attr:`Tally.enough`: the coordinator's own and one per
    replica that acknowledged.

    Raises:
      QuorumNotReached: fewer than W.
    """
    acks = 1 + len(tally.replies)
    if acks < need:
        raise QuorumNotReached(acks, need)
    return acks
