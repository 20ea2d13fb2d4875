"""Per-member versioned namespaces and the scuttlebutt digest/delta arithmetic (Versioned Value).

Each member owns one namespace: string keys, each holding a value and the owner's version counter at
the time of the write. Only the owner writes; everyone else learns newer entries through deltas.
A delta for one member carries every key whose version lies in ``(floor, max_version]``, so a delta
cut short by the byte budget is still a contiguous prefix and applying it is idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .._messages import DigestEntry, NodeDelta, VersionedEntry, encoded_size


@dataclass(slots=True)
class Namespace:
    """One incarnation's versioned key-value namespace."""

    node_id: str
    generation: int
    heartbeat: int = 0
    max_version: int = 0
    entries: dict[str, tuple[object, int]] = field(default_factory=dict)

    def get(self, key: str) -> object:
        item = self.entries.get(key)
        return None if item is None else item[0]

    def set(self, key: str, value: object) -> bool:
        """Owner write: store ``value`` under a new version; returns False if it is unchanged."""
        item = self.entries.get(key)
        if item is not None and item[0] == value:
            return False
        self.max_version += 1
        self.entries[key] = (value, self.max_version)
        return True

    def digest(self) -> DigestEntry:
        return DigestEntry(self.node_id, self.generation, self.heartbeat, self.max_version)

    def delta_since(self, floor: int, budget: int) -> NodeDelta | None:
        """The entries newer than ``floor`` that fit in ``budget`` bytes (``None`` if none fit)."""
        newer = sorted(
            (version, key, value)
            for key, (value, version) in self.entries.items()
            if version > floor
        )
        head = NodeDelta(self.node_id, self.generation, self.heartbeat, floor, floor, ())
        used = encoded_size(head)
        if used > budget:
            return None
        chosen: list[VersionedEntry] = []
        top = floor
        for version, key, value in newer:
            entry = VersionedEntry(key, value, version)
            size = encoded_size(entry)
            if used + size > budget:
                break
            used += size
            chosen.append(entry)
            top = version
        if not newer:
            top = self.max_version
        return NodeDelta(self.node_id, self.generation, self.heartbeat, floor, top, tuple(chosen))


def staleness_order(
    mine: Mapping[str, Namespace], theirs: Mapping[str, DigestEntry]
) -> list[tuple[Namespace, int]]:
    """What the other side lacks, as ``(namespace, floor)``: unknown members first, then stalest.

    A member is lacking when the other side does not know it, knows an older generation, or has a
    lower ``max_version`` or heartbeat. ``floor`` is the version the other side already has (0 when it
    needs the whole namespace).
    """
    unknown: list[tuple[Namespace, int]] = []
    stale: list[tuple[int, str, Namespace, int]] = []
    for node_id, ns in mine.items():
        seen = theirs.get(node_id)
        if seen is None or seen.generation < ns.generation:
            unknown.append((ns, 0))
        elif seen.generation == ns.generation and (
            seen.max_version < ns.max_version or seen.heartbeat < ns.heartbeat
        ):
            floor = min(seen.max_version, ns.max_version)
            stale.append((-(ns.max_version - floor), node_id, ns, floor))
    unknown.sort(key=lambda item: item[0].node_id)
    stale.sort(key=lambda item: (item[0], item[1]))
    return unknown + [(ns, floor) for _, _, ns, floor in stale]


def build_delta(
    mine: Mapping[str, Namespace], theirs: Mapping[str, DigestEntry], budget: int
) -> tuple[NodeDelta, ...]:
    """Deltas for everything the other side lacks, within ``budget`` encoded bytes."""
    out: list[NodeDelta] = []
    left = budget - 9  # the enclosing array header
    for ns, floor in staleness_order(mine, theirs):
        nd = ns.delta_since(floor, left)
        if nd is None:
            continue
        size = encoded_size(nd)
        if size > left:
            continue
        out.append(nd)
        left -= size
    return tuple(out)


def wanted_digest(
    mine: Mapping[str, Namespace], theirs: Iterable[DigestEntry]
) -> tuple[DigestEntry, ...]:
    """Our digest entries for the members where the other side is ahead of us (or unknown to us)."""
    out: list[DigestEntry] = []
    for entry in theirs:
        ns = mine.get(entry.node_id)
        if ns is None or ns.generation < entry.generation:
            out.append(DigestEntry(entry.node_id, 0, 0, 0))
        elif ns.generation == entry.generation and (
            ns.max_version < entry.max_version or ns.heartbeat < entry.heartbeat
        ):
            out.append(ns.digest())
    return tuple(out)
