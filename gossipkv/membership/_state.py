"""Per-member versioned namespaces and the scuttlebutt digest/delta arithmetic (Versioned Value).

Each member owns one namespace: string keys, each holding a value and the owner's version counter at
the time of the write. Only the owner writes; everyone else learns newer entries through deltas.
A delta for one member carries every key whose version lies in ``(floor, max_version]``, so a delta
cut short by the byte budget is still a contiguous prefix and applying it is idempotent.

Digests summarise: a SYN carries one hash per bucket of members (of each member's generation and
newest version, never its heartbeat), so two peers that agree exchange no per-member versions at
all; entries are listed only for the buckets that differ, and heartbeats travel as a sample of
digest entries bounded in bytes (see :func:`bucket_hashes`, :func:`digest_entry_size`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .._messages import DigestEntry, NodeDelta, VersionedEntry, encoded_size


class Watcher(Protocol):
    """Told whenever a namespace's newest version moves (see :class:`ViewSummary`)."""

    def update(self, node_id: str, generation: int, max_version: int) -> None: ...


@dataclass(slots=True)
class Namespace:
    """One incarnation's versioned key-value namespace."""

    node_id: str
    generation: int
    heartbeat: int = 0
    max_version: int = 0
    entries: dict[str, tuple[object, int]] = field(default_factory=dict)
    #: Encoded size of each entry as a :class:`VersionedEntry` (deltas are cut to a byte budget
    #: for every exchange; sizing an entry once per write, not once per exchange, keeps a
    #: member's cost per round independent of how big the namespaces are).
    sizes: dict[str, int] = field(default_factory=dict)
    #: Told of every change of ``max_version`` (the view's summary), if any.
    watcher: Watcher | None = None

    def get(self, key: str) -> object:
        item = self.entries.get(key)
        return None if item is None else item[0]

    def set(self, key: str, value: object) -> bool:
        """Owner write: store ``value`` under a new version; returns False if it is unchanged."""
        item = self.entries.get(key)
        if item is not None and item[0] == value:
            return False
        self.put(key, value, self.max_version + 1)
        return True

    def put(self, key: str, value: object, version: int) -> None:
        """Store an entry as it was written (by the owner, at ``version``)."""
        self.entries[key] = (value, version)
        self.sizes.pop(key, None)
        if version > self.max_version:
            self.raise_max(version)

    def raise_max(self, version: int) -> None:
        """Note that versions up to ``version`` are known (a delta's top may exceed its entries)."""
        if version > self.max_version:
            self.max_version = version
            if self.watcher is not None:
                self.watcher.update(self.node_id, self.generation, version)

    def entry_size(self, key: str) -> int:
        size = self.sizes.get(key)
        if size is None:
            value, version = self.entries[key]
            size = self.sizes[key] = encoded_size(VersionedEntry(key, value, version))
        return size

    def digest(self) -> DigestEntry:
        return DigestEntry(self.node_id, self.generation, self.heartbeat, self.max_version)

    def delta_since(self, floor: int, budget: int) -> NodeDelta | None:
        """The entries newer than ``floor`` that fit in ``budget`` bytes (``None`` if none fit)."""
        newer = sorted(
            (version, key, value)
            for key, (value, version) in self.entries.items()
            if version > floor
        )
        used = self._head_size(floor, floor)
        if used > budget:
            return None
        chosen: list[VersionedEntry] = []
        top = floor
        for version, key, value in newer:
            size = self.entry_size(key)
            if used + size > budget:
                break
            used += size
            chosen.append(VersionedEntry(key, value, version))
            top = version
        if not newer:
            top = self.max_version
        return NodeDelta(self.node_id, self.generation, self.heartbeat, floor, top, tuple(chosen))

    def delta_size(self, nd: NodeDelta) -> int:
        """The encoded size of ``nd``, one of this namespace's deltas (from the cached entry
        sizes: a delta is sized once per exchange, its entries once per write)."""
        n = len(nd.entries)
        head = self._head_size(nd.floor, nd.max_version) - 1 + _head(n)
        return head + sum(self.entry_size(e.key) for e in nd.entries)

    def _head_size(self, floor: int, top: int) -> int:
        """The encoded size of a delta of this namespace from ``floor`` to ``top`` without
        entries: what :func:`encoded_size` says, computed directly (deltas are sized often)."""
        name = _name_bytes(self.node_id)
        ints = _head(self.generation) + _head(self.heartbeat) + _head(floor) + _head(top)
        return 1 + _head(name) + name + ints + 1


def staleness_order(
    mine: Mapping[str, Namespace], theirs: Mapping[str, DigestEntry]
) -> list[tuple[Namespace, int]]:
    """What the other side lacks, as ``(namespace, floor)``: unknown members first, then stalest.

    A member is lacking when the other side does not know it, knows an older generation, or has a
    lower ``max_version`` (heartbeats travel in digests, never as deltas). ``floor`` is the version the other side already has (0 when it
    needs the whole namespace).
    """
    unknown: list[tuple[Namespace, int]] = []
    stale: list[tuple[int, str, Namespace, int]] = []
    for node_id, ns in mine.items():
        seen = theirs.get(node_id)
        if seen is None or seen.generation < ns.generation:
            unknown.append((ns, 0))
        elif seen.generation == ns.generation and seen.max_version < ns.max_version:
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
        size = ns.delta_size(nd)
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
        elif ns.generation == entry.generation and ns.max_version < entry.max_version:
            out.append(ns.digest())
    return tuple(out)


_MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=16384)
def bucket_of(node_id: str, buckets: int) -> int:
    """The bucket of a member: a stable hash of its name (every peer computes the same).
    Cached: every SYN sent and received sums the whole view into buckets."""
    digest = hashlib.blake2b(node_id.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big") % buckets


def _version_hash(node_id: str, generation: int, max_version: int) -> int:
    raw = f"{node_id}\x00{generation}\x00{max_version}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def bucket_hashes(namespaces: Iterable[Namespace], buckets: int) -> tuple[int, ...]:
    """One 64-bit hash per bucket of what is known of its members: ``(node_id, generation,
    max_version)`` summed modulo 2**64, so the order members were learned in does not matter.
    Heartbeats are left out: they change every round and travel in digest samples instead."""
    out = [0] * buckets
    for ns in namespaces:
        b = bucket_of(ns.node_id, buckets)
        out[b] = (out[b] + _version_hash(ns.node_id, ns.generation, ns.max_version)) & _MASK64
    return tuple(out)


class ViewSummary:
    """The bucket hashes of a view (see :func:`bucket_hashes`), kept current as it changes.

    Each member's contribution is remembered, so a change of one member moves one bucket sum
    per bucket count in use, and a SYN sent or answered costs the bucket count, not the view's
    size. Sums are kept for the few bucket counts asked for most recently, and so are the
    members of each bucket (:meth:`members`): an exchange lists and compares the members of the
    buckets that differ without going through the whole view.
    """

    __slots__ = ("_counts", "_hashes", "_members", "_sums", "_tuples")

    #: Bucket counts whose sums are kept up to date (a peer asks for its own count and, while
    #: the cluster grows, its neighbours' counts).
    KEPT = 4

    def __init__(self) -> None:
        self._hashes: dict[str, int] = {}
        self._sums: dict[int, list[int]] = {}
        self._tuples: dict[int, tuple[int, ...]] = {}
        #: Per kept bucket count, the members of each bucket (dicts: in the order learned).
        self._members: dict[int, list[dict[str, None]]] = {}
        self._counts: list[int] = []  # most recently asked for last

    def update(self, node_id: str, generation: int, max_version: int) -> None:
        """Set (or replace) what is known of ``node_id``."""
        self._move(node_id, _version_hash(node_id, generation, max_version))

    def drop(self, node_id: str) -> None:
        """Forget ``node_id`` (it left the view)."""
        if node_id in self._hashes:
            self._move(node_id, None)

    def _move(self, node_id: str, new: int | None) -> None:
        known = node_id in self._hashes
        old = self._hashes.get(node_id, 0)
        if new is None:
            del self._hashes[node_id]
            for count, members in self._members.items():
                del members[bucket_of(node_id, count)][node_id]
        else:
            self._hashes[node_id] = new
            if not known:
                for count, members in self._members.items():
                    members[bucket_of(node_id, count)][node_id] = None
        delta = (new or 0) - old
        if not delta:
            return
        for count, sums in self._sums.items():
            b = bucket_of(node_id, count)
            sums[b] = (sums[b] + delta) & _MASK64
        self._tuples.clear()

    def buckets(self, count: int) -> tuple[int, ...]:
        """The bucket hashes for ``count`` buckets (``1 <= count``)."""
        cached = self._tuples.get(count)
        if cached is not None:
            return cached
        out = self._tuples[count] = tuple(self._keep(count))
        return out

    def members(self, count: int, bucket: int) -> Iterable[str]:
        """The members in ``bucket`` of ``count`` buckets (``0 <= bucket < count``), in the order
        they were learned; do not change the view while iterating."""
        self._keep(count)
        return self._members[count][bucket].keys()

    def _keep(self, count: int) -> list[int]:
        """The sums for ``count`` buckets, kept up to date from now on (the least recently asked
        for count is dropped when more than :attr:`KEPT` are kept)."""
        sums = self._sums.get(count)
        if sums is None:
            sums = [0] * count
            members: list[dict[str, None]] = [{} for _ in range(count)]
            for node_id, h in self._hashes.items():
                b = bucket_of(node_id, count)
                sums[b] = (sums[b] + h) & _MASK64
                members[b][node_id] = None
            self._sums[count] = sums
            self._members[count] = members
            self._counts.append(count)
            if len(self._counts) > self.KEPT:
                dropped = self._counts.pop(0)
                del self._sums[dropped]
                del self._members[dropped]
        elif self._counts[-1] != count:
            self._counts.remove(count)
            self._counts.append(count)
        return sums


def _head(n: int) -> int:
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5 if n < 1 << 32 else 9


@functools.lru_cache(maxsize=16384)
def _name_bytes(node_id: str) -> int:
    return len(node_id.encode("utf-8", "surrogatepass"))


def digest_entry_size(entry: DigestEntry) -> int:
    """Encoded size of one digest entry (what :func:`encoded_size` would say, computed directly:
    digests are sized entry by entry for every message)."""
    name = _name_bytes(entry.node_id)
    return (
        1
        + _head(name)
        + name
        + _head(entry.generation)
        + _head(entry.heartbeat)
        + _head(entry.max_version)
    )
