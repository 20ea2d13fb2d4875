"""Fixed Partitions: Q partitions, each with a preference list of N owners, chosen by the leader.

Keys map to partitions by a stable hash (``_dvv.partition_of``: blake2b of the UTF-8 key, never
Python's ``hash``). The leader plans the table over the up members; :func:`plan` keeps every
owner that is still a member where it was, fills the gaps so the load stays balanced (a flow:
greedy placement, then augmenting paths that re-aim only what the plan itself placed) and evens
out what is left by moving kept replicas, so a join moves only the newcomer's share and a leave
only the leaver's replicas. Sans-IO core.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_PARTITIONS = 64
DEFAULT_REPLICAS = 3


@dataclass(frozen=True, slots=True)
class PartitionTable:
    """The table a leader published: ``owners[p]`` is partition ``p``'s preference list."""

    term: int
    seq: int
    n: int
    owners: tuple[tuple[str, ...], ...]

    @property
    def epoch(self) -> tuple[int, int]:
        return (self.term, self.seq)

    @property
    def q(self) -> int:
        return len(self.owners)

    def owned_by(self, node_id: str) -> list[int]:
        return [p for p, owners in enumerate(self.owners) if node_id in owners]

    def replica_counts(self) -> Counter[str]:
        """How many partitions each member owns a replica of."""
        return Counter(o for owners in self.owners for o in owners)

    def to_plain(self) -> list[object]:
        return [self.term, self.seq, self.n, [list(o) for o in self.owners]]

    @classmethod
    def from_plain(cls, raw: object) -> PartitionTable | None:
        """Validate a table received from a peer or read from disk; ``None`` if malformed."""
        match raw:
            case [int(term), int(seq), int(n), list(owners)] if (
                0 < n <= 16 and 0 < len(owners) <= 4096
            ):
                pass
            case _:
                return None
        parsed: list[tuple[str, ...]] = []
        for item in owners:
            if (
                not isinstance(item, list)
                or len(item) > n
                or not all(isinstance(o, str) and o for o in item)
                or len(set(item)) != len(item)
            ):
                return None
            parsed.append(tuple(item))
        if min(term, seq) < 0:
            return None
        return cls(term, seq, n, tuple(parsed))


def plan(
    members: Sequence[str],
    *,
    partitions: int,
    replicas: int,
    previous: PartitionTable | None = None,
) -> tuple[tuple[str, ...], ...]:
    """Preference lists for ``partitions`` partitions over ``members``.

    Each list has ``min(replicas, len(members))`` distinct owners, and the members' loads (the
    replicas each owns) differ by at most one. Owners from ``previous`` that are still members
    keep their place, and the plan moves as few replicas as that allows: a join moves only what
    the newcomer takes, and a leave or a removal only the departed member's replicas, each to
    one remaining member. A leave needs more only when the kept owners leave no balanced way
    to place the leaver's replicas (one member that shares nearly all the leaver's partitions,
    say); the tables this function makes are shaped against that, each replica placed beside
    the owners it shares fewest partitions with, and random histories of joins and leaves
    never met it (``tests/unit/test_partitions.py``), but it is not proven. Deterministic.
    """
    if partitions < 1 or replicas < 1:
        raise ValueError("partitions and replicas must be positive")
    names = sorted(set(members))
    if not names:
        return tuple(() for _ in range(partitions))
    n = min(replicas, len(names))
    alive = set(names)
    kept: list[list[str]] = []
    for p in range(partitions):
        row: list[str] = []
        if previous is not None and previous.q == partitions:
            row = [o for o in previous.owners[p] if o in alive][:n]
        kept.append(row)
    draft = _Draft(names, kept)
    draft.fill_balanced(n)
    draft.fill_rest(n)
    draft.even_out()
    return tuple(tuple(o) for o in draft.lists)


class _Draft:
    """A table being planned: the owner lists, each member's load and partitions, how many
    partitions each pair of members shares, and which owners this plan placed (they move
    anyway, so re-aiming one costs no extra move)."""

    def __init__(self, names: list[str], lists: list[list[str]]) -> None:
        self.names = names
        self.rank = {m: i for i, m in enumerate(names)}
        self.lists = lists
        self.placed: list[set[str]] = [set() for _ in lists]
        self.load: Counter[str] = Counter(dict.fromkeys(names, 0))
        self.parts: dict[str, set[int]] = {m: set() for m in names}
        self.pairs: Counter[tuple[str, str]] = Counter()
        for p, owners in enumerate(lists):
            for i, m in enumerate(owners):
                self.load[m] += 1
                self.parts[m].add(p)
                for o in owners[:i]:
                    self.pairs[_pair(m, o)] += 1

    def _key(self, p: int, m: str) -> tuple[int, int, int]:
        """Whom to place in partition ``p`` first: the least loaded, then the one sharing
        fewest partitions with ``p``'s owners, then by a rotation so partitions spread out."""
        shared = sum(self.pairs[_pair(m, o)] for o in self.lists[p])
        return (self.load[m], shared, (self.rank[m] - p) % len(self.names))

    def _put(self, p: int, m: str, instead: str | None = None) -> None:
        """Place ``m`` in partition ``p``: appended, or in the place of ``instead``."""
        owners = self.lists[p]
        if instead is not None:
            i = owners.index(instead)
            others = owners[:i] + owners[i + 1 :]
            owners[i] = m
            self.load[instead] -= 1
            self.parts[instead].discard(p)
            self.placed[p].discard(instead)
            for o in others:
                self.pairs[_pair(instead, o)] -= 1
        else:
            others = list(owners)
            owners.append(m)
        self.load[m] += 1
        self.parts[m].add(p)
        self.placed[p].add(m)
        for o in others:
            self.pairs[_pair(m, o)] += 1

    def fill_balanced(self, n: int) -> None:
        """Fill the gaps (up to ``n`` owners each) so that every load ends between ``b`` and
        ``b + 1`` (``b``: the total divided by the members, rounded down), as far as the kept
        owners allow.

        A flow with lower and upper bounds, found in two rounds of augmenting paths: first up to
        each member's ``b``, then up to ``b + 1``. A path only re-aims owners this plan placed
        (never a kept one) and never takes a placement away from a member, so when any filling
        balances every load, the second round ends with every gap filled and every load
        balanced. Each round places greedily first and searches paths only for what is left.
        """
        floor = len(self.lists) * n // len(self.names)
        for limit in (floor, floor + 1):
            room = {m: max(0, limit - self.load[m]) for m in self.names}
            for p, owners in enumerate(self.lists):
                while len(owners) < n:
                    fits = [m for m in self.names if room[m] > 0 and m not in owners]
                    if not fits:
                        break
                    pick = min(fits, key=lambda m: self._key(p, m))
                    self._put(p, pick)
                    room[pick] -= 1
            for p, owners in enumerate(self.lists):
                while len(owners) < n and self._augment(p, room):
                    pass

    def _augment(self, start: int, room: dict[str, int]) -> bool:
        """Fill one gap of partition ``start`` through a chain of re-aimed placements, if any.

        Breadth first: from a partition to each member not among its owners; from a member
        with no room left to each partition this plan placed it in (it would hand that one on
        and take the previous partition's gap instead), until a member with room. Every member
        on the chain keeps its load except the last, which gains one.
        """
        took: dict[str, int] = {}  # member -> the partition it would take
        gave: dict[int, str | None] = {start: None}  # partition -> the member handing it on
        queue = deque([start])
        while queue:
            p = queue.popleft()
            for m in self.names:
                if m in took or m in self.lists[p]:
                    continue
                took[m] = p
                if room[m] > 0:
                    room[m] -= 1
                    member: str | None = m
                    while member is not None:
                        q = took[member]
                        giver = gave[q]
                        self._put(q, member, instead=giver)
                        member = giver
                    return True
                for q in sorted(self.parts[m]):
                    if m in self.placed[q] and q not in gave:
                        gave[q] = m
                        queue.append(q)
        return False

    def fill_rest(self, n: int) -> None:
        """The gaps a balanced fill could not close: least loaded first (evened out later)."""
        for p, owners in enumerate(self.lists):
            while len(owners) < n:
                self._put(
                    p,
                    min((m for m in self.names if m not in owners), key=lambda m: self._key(p, m)),
                )

    def even_out(self) -> None:
        """Even out until loads differ by at most one.

        First re-aim owners this plan placed from any member to one at least two lighter (they
        move anyway, so that is free). Then move kept replicas from the most to the least loaded
        member (a join's share), each from the partition where it best evens out how many
        partitions pairs of members share. A kept move never opens a new free re-aim (the most
        loaded gets lighter, the least loaded heavier), so the free pass runs once.
        """
        names, load = self.names, self.load

        def lightest(owners: list[str]) -> str:
            return min((m for m in names if m not in owners), key=lambda m: (load[m], m))

        free = True
        while free:
            free = False
            for p, owners in enumerate(self.lists):
                for a in sorted(self.placed[p], key=lambda m: (-load[m], m)):
                    if len(owners) == len(names):
                        break
                    b = lightest(owners)
                    if load[a] - load[b] >= 2:
                        self._put(p, b, instead=a)
                        free = True
        while True:
            most = max(names, key=lambda m: (load[m], m))
            least = min(names, key=lambda m: (load[m], m))
            if load[most] - load[least] <= 1:
                break
            movable = self.parts[most] - self.parts[least]
            if not movable:
                break
            # What replacing ``most`` by ``least`` beside each owner does to the shared counts.
            relief = {
                o: self.pairs[_pair(most, o)] - self.pairs[_pair(least, o)]
                for o in names
                if o not in (most, least)
            }
            best = max(movable, key=lambda p: (sum(relief.get(o, 0) for o in self.lists[p]), -p))
            self._put(best, least, instead=most)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def moves(old: PartitionTable | None, new: tuple[tuple[str, ...], ...]) -> int:
    """How many (partition, owner) replicas ``new`` adds compared with ``old``."""
    if old is None or old.q != len(new):
        return sum(len(o) for o in new)
    return sum(len(set(b) - set(a)) for a, b in zip(old.owners, new, strict=True))
