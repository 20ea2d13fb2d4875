"""Fixed Partitions: Q partitions, each with a preference list of N owners, chosen by the leader.

Keys map to partitions by a stable hash (``_dvv.partition_of``: blake2b of the UTF-8 key, never
Python's ``hash``). The leader plans the table over the up members; :func:`plan` keeps every
owner that is still a member where it was, fills the gaps with the least-loaded members and then
evens the load out, so a join or a leave moves as few replicas as possible. Sans-IO core.
"""

from __future__ import annotations

from collections import Counter
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

    Each list has ``min(replicas, len(members))`` distinct owners. Owners from ``previous`` that are
    still members keep their place; the rest is filled least-loaded first, then replicas move from
    the most to the least loaded member until loads differ by at most one. Deterministic.
    """
    if partitions < 1 or replicas < 1:
        raise ValueError("partitions and replicas must be positive")
    names = sorted(set(members))
    if not names:
        return tuple(() for _ in range(partitions))
    n = min(replicas, len(names))
    alive = set(names)
    lists: list[list[str]] = []
    for p in range(partitions):
        kept: list[str] = []
        if previous is not None and previous.q == partitions:
            kept = [o for o in previous.owners[p] if o in alive][:n]
        lists.append(kept)
    load: Counter[str] = Counter(dict.fromkeys(names, 0))
    for owners in lists:
        load.update(owners)
    # Fill the gaps, least-loaded first (ties by a rotation so partitions spread out).
    placed: list[set[str]] = [set() for _ in lists]  # owners this plan adds (moves anyway)
    for p, owners in enumerate(lists):
        while len(owners) < n:
            pick = min(
                (m for m in names if m not in owners),
                key=lambda m: (load[m], (names.index(m) - p) % len(names)),
            )
            owners.append(pick)
            placed[p].add(pick)
            load[pick] += 1

    # Even out until loads differ by at most one. First re-aim replicas this plan placed (they
    # move anyway, so re-aiming one costs no extra move) from any member to one at least two
    # lighter; only when none is left, move a kept replica from the most to the least loaded.
    def lightest(owners: list[str]) -> str:
        return min((m for m in names if m not in owners), key=lambda m: (load[m], m))

    while True:
        free = True
        while free:
            free = False
            for p, owners in enumerate(lists):
                for a in sorted(placed[p], key=lambda m: (-load[m], m)):
                    if len(owners) == len(names):
                        break
                    b = lightest(owners)
                    if load[a] - load[b] >= 2:
                        owners[owners.index(a)] = b
                        placed[p].discard(a)
                        placed[p].add(b)
                        load[a] -= 1
                        load[b] += 1
                        free = True
        most = max(names, key=lambda m: (load[m], m))
        least = min(names, key=lambda m: (load[m], m))
        if load[most] - load[least] <= 1:
            break
        movable = [p for p, owners in enumerate(lists) if most in owners and least not in owners]
        if not movable:
            break
        owners = lists[movable[0]]
        owners[owners.index(most)] = least
        placed[movable[0]].add(least)
        load[most] -= 1
        load[least] += 1
    return tuple(tuple(o) for o in lists)


def moves(old: PartitionTable | None, new: tuple[tuple[str, ...], ...]) -> int:
    """How many (partition, owner) replicas ``new`` adds compared with ``old``."""
    if old is None or old.q != len(new):
        return sum(len(o) for o in new)
    return sum(len(set(b) - set(a)) for a, b in zip(old.owners, new, strict=True))
