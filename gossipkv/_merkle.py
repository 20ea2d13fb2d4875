"""Merkle trees over a replica's records, kept current on every write (TicTac trees).

Pattern: Merkle Tree anti-entropy as in Riak's ``kv_index_tictactree``: every stored record has a
*record hash* (60 bits of blake2b over the key and the canonical clock bytes); a tree *segment* is
the XOR of the record hashes of its keys, a *branch* the XOR of its segments and the *root* the
XOR of its branches. XOR makes a write O(1): replacing a record XORs ``old ^ new`` into one
segment, one branch and the root, with no read and no rehash. Two replicas hold equal trees when
they hold equal records (a difference cancels out only with probability about 2^-60).

Sizes (one tree per Fixed Partition): :data:`SEGMENTS` = 4096 segments in :data:`BRANCHES` = 64
branches of 64. A partition of ~16k keys (1M keys over 64 partitions) has about 4 keys per
segment, so k differing keys are found by fetching at most k branches' segment hashes and the keys
of at most k segments. A tree is 4096 x 8 bytes = 32 KiB; trees exist only for partitions that
hold keys.

A key's segment comes from the top 12 bits of the same 64-bit blake2b whose remainder modulo the
partition count is its partition (:func:`gossipkv._dvv.partition_of`), so the segment does not
depend on the partition count, and :class:`RecordHashes` can bucket the per-key hashes by segment
before a table (and its count) is known. Listing the keys of one segment then reads one bucket.

Owns :class:`RecordHashes` (the per-key hashes a storage engine keeps beside its key index, about
65 bytes a key) and :class:`MerkleTrees` (the trees for one partition count, fed by it). Sans-IO:
stdlib only; whoever drives a build or a check decides when to yield.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator

#: Segments per partition tree (and buckets of :class:`RecordHashes`).
SEGMENTS = 4096
#: Branches per tree; each covers ``SEGMENTS_PER_BRANCH`` consecutive segments.
BRANCHES = 64
SEGMENTS_PER_BRANCH = SEGMENTS // BRANCHES
#: Bytes of one hash on the wire (big-endian).
HASH_BYTES = 8

_SEGMENT_SHIFT = 64 - 12  # the top 12 bits of the 64-bit key digest
_BRANCH_SHIFT = 6  # segment -> branch
# 60 bits: a Python int below 2**60 takes two 30-bit digits (32 bytes), four fewer than 64 bits.
_RECORD_MASK = (1 << 60) - 1
_PERSON = b"gossipkv-rec"


def key_digest(kb: bytes | bytearray | memoryview) -> int:
    """The 64-bit blake2b of a key's UTF-8 bytes; modulo the partition count it is the key's
    partition, its top 12 bits are the key's segment."""
    return int.from_bytes(hashlib.blake2b(kb, digest_size=8).digest(), "big")


def segment_of(digest: int) -> int:
    """The segment (``0..SEGMENTS-1``) of a key with this :func:`key_digest`."""
    return digest >> _SEGMENT_SHIFT


def record_hash(kb: bytes | bytearray | memoryview, clock: bytes | memoryview) -> int:
    """The record hash of a key (UTF-8 bytes) holding a clock (canonical CBOR): never 0,
    which stands for "no record"."""
    h = hashlib.blake2b(digest_size=8, person=_PERSON)
    h.update(len(kb).to_bytes(2, "big"))
    h.update(kb)
    h.update(clock)
    return (int.from_bytes(h.digest(), "big") & _RECORD_MASK) or 1


def pack(hashes: Iterable[int]) -> bytes:
    """Hashes as concatenated 8-byte big-endian words (the wire form)."""
    return b"".join(h.to_bytes(HASH_BYTES, "big") for h in hashes)


def unpack(data: bytes) -> list[int]:
    """The inverse of :func:`pack`.

    Raises:
      ValueError: ``data`` is not a whole number of hashes.
    """
    if len(data) % HASH_BYTES:
        raise ValueError(f"{len(data)} bytes is not a whole number of {HASH_BYTES}-byte hashes")
    return [int.from_bytes(data[i : i + HASH_BYTES], "big") for i in range(0, len(data), 8)]


class PartitionTree:
    """The tree of one partition: segment, branch and root hashes (all XORs of record hashes)."""

    __slots__ = ("branches", "root", "segments")

    def __init__(self) -> None:
        self.segments = array("Q", bytes(8 * SEGMENTS))
        self.branches = array("Q", bytes(8 * BRANCHES))
        self.root = 0

    def toggle(self, segment: int, delta: int) -> None:
        """XOR ``delta`` (``old ^ new`` record hashes) into a segment, its branch and the root."""
        self.segments[segment] ^= delta
        self.branches[segment >> _BRANCH_SHIFT] ^= delta
        self.root ^= delta

    def branch_segments(self, branch: int) -> array[int]:
        """The segment hashes of one branch."""
        start = branch * SEGMENTS_PER_BRANCH
        return self.segments[start : start + SEGMENTS_PER_BRANCH]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionTree):
            return NotImplemented
        return self.root == other.root and self.segments == other.segments

    __hash__ = None  # type: ignore[assignment]


def branches_of(segments: Iterable[int]) -> list[int]:
    """The sorted branches covering some segments."""
    return sorted({s >> _BRANCH_SHIFT for s in segments})


def differing(mine: Iterable[int], theirs: Iterable[int]) -> list[int]:
    """Indexes where two equal-length hash sequences differ."""
    return [i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b]


class MerkleTrees:
    """The partition trees of one store for one partition count ``q``.

    Fed by :class:`RecordHashes` (through :meth:`RecordHashes.attach`); built bucket by bucket
    (:meth:`RecordHashes.build_step`), and a write reaches a tree only once its bucket is built,
    so writes during a build are counted exactly once. A *check* (:meth:`begin_check`,
    :meth:`finish_check`) compares one partition's live tree with one rebuilt from the records
    on disk and replaces it when they differ.
    """

    def __init__(self, q: int) -> None:
        if q < 1:
            raise ValueError("q must be >= 1")
        self.q = q
        self._trees: dict[int, PartitionTree] = {}
        #: Buckets (segments) whose keys are in the trees: writes to later buckets wait for the
        #: build to read them.
        self.built = 0
        #: Partitions being checked -> keys written meanwhile.
        self._touched: dict[int, set[str]] = {}

    @property
    def ready(self) -> bool:
        """Every bucket is in the trees."""
        return self.built >= SEGMENTS

    def tree(self, partition: int) -> PartitionTree | None:
        """The tree of ``partition`` (``None``: no key of it was ever stored here)."""
        return self._trees.get(partition)

    def root(self, partition: int) -> int:
        """The root hash of ``partition`` (0 when empty)."""
        tree = self._trees.get(partition)
        return 0 if tree is None else tree.root

    def partitions(self) -> list[int]:
        """Partitions with a tree, sorted."""
        return sorted(self._trees)

    def _apply(self, key: str, digest: int, delta: int) -> None:
        partition = digest % self.q
        tree = self._trees.get(partition)
        if tree is None:
            tree = self._trees[partition] = PartitionTree()
        tree.toggle(digest >> _SEGMENT_SHIFT, delta)
        touched = self._touched.get(partition)
        if touched is not None:
            touched.add(key)

    def begin_check(self, partition: int) -> None:
        """Start remembering the keys of ``partition`` written from now on (see
        :meth:`finish_check`)."""
        self._touched[partition] = set()

    def abandon_check(self, partition: int) -> None:
        """Stop a check of ``partition`` that will not finish."""
        self._touched.pop(partition, None)

    def finish_check(
        self,
        partition: int,
        fresh: dict[str, int],
        hashes: RecordHashes,
        *,
        listed: Iterable[str] = (),
    ) -> bool:
        """Compare the live tree of ``partition`` with one built from ``fresh`` (the record
        hashes read back from the store since :meth:`begin_check`), and replace it if they
        differ. Keys written during the read are taken from ``hashes`` (the read may have seen
        either version); per-key hashes that disagree with ``fresh`` are corrected too, and
        ``listed`` keys (those the read was asked for) that the store no longer holds are
        forgotten.

        Returns:
          True when the live tree (or a per-key hash) was wrong and has been replaced.
        """
        touched = self._touched.pop(partition, set())
        wrong_keys = 0
        for key in listed:
            if key not in fresh and key not in touched and hashes.get(key) is not None:
                wrong_keys += 1
                hashes.correct(key, key_digest(key.encode("utf-8")), None)
        for key in touched:
            current = hashes.get(key)
            if current is None:
                fresh.pop(key, None)
            else:
                fresh[key] = current
        rebuilt = PartitionTree()
        for key, h in fresh.items():
            digest = key_digest(key.encode("utf-8"))
            rebuilt.toggle(digest >> _SEGMENT_SHIFT, h)
            if hashes.get(key) != h:
                wrong_keys += 1
                hashes.correct(key, digest, h)
        live = self._trees.get(partition, PartitionTree())
        if live == rebuilt and not wrong_keys:
            return False
        self._trees[partition] = rebuilt
        return True


class RecordHashes:
    """The record hash of every key a store holds, bucketed by segment (one dict per segment).

    A storage engine calls :meth:`set` and :meth:`discard` exactly where its key index changes,
    so the hashes (and attached trees) follow every write path. About 65 bytes a key (a dict
    slot and a 60-bit int): 65 MB at 1M keys.
    """

    def __init__(self) -> None:
        self._buckets: list[dict[str, int]] = [{} for _ in range(SEGMENTS)]
        self.trees: MerkleTrees | None = None

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets)

    def get(self, key: str) -> int | None:
        """The record hash of ``key`` (``None``: not stored)."""
        return self._buckets[segment_of(key_digest(key.encode("utf-8")))].get(key)

    def set(self, key: str, h: int, kb: bytes | bytearray | memoryview | None = None) -> None:
        """``key`` now holds a record with hash ``h`` (``kb``: its UTF-8 bytes, if at hand)."""
        digest = key_digest(key.encode("utf-8") if kb is None else kb)
        bucket = self._buckets[digest >> _SEGMENT_SHIFT]
        old = bucket.get(key, 0)
        bucket[key] = h
        trees = self.trees
        if trees is not None and (digest >> _SEGMENT_SHIFT) < trees.built and old != h:
            trees._apply(key, digest, old ^ h)

    def discard(self, key: str) -> None:
        """``key`` holds no record any more (quarantined, or reaped)."""
        digest = key_digest(key.encode("utf-8"))
        old = self._buckets[digest >> _SEGMENT_SHIFT].pop(key, None)
        trees = self.trees
        if old is not None and trees is not None and (digest >> _SEGMENT_SHIFT) < trees.built:
            trees._apply(key, digest, old)

    def correct(self, key: str, digest: int, h: int | None) -> None:
        """Set (or, with ``None``, forget) a per-key hash found wrong by a check, without
        touching the trees (the check replaces the tree itself)."""
        if h is None:
            self._buckets[digest >> _SEGMENT_SHIFT].pop(key, None)
        else:
            self._buckets[digest >> _SEGMENT_SHIFT][key] = h

    def bucket(self, segment: int) -> list[str]:
        """A snapshot of the keys of ``segment``, of every partition."""
        return list(self._buckets[segment])

    def segment(self, partition: int, q: int, segment: int) -> Iterator[tuple[str, int]]:
        """``(key, record hash)`` of the keys of ``partition`` (of ``q``) in ``segment``."""
        for key, h in self._buckets[segment].items():
            if key_digest(key.encode("utf-8")) % q == partition:
                yield key, h

    def attach(self, q: int) -> MerkleTrees:
        """Start trees for partition count ``q`` (replacing any for another count); they fill as
        :meth:`build_step` is called."""
        self.trees = MerkleTrees(q)
        return self.trees

    def build_step(self, buckets: int) -> bool:
        """Add up to ``buckets`` more buckets to the attached trees; True once all are in.

        One step holds the caller for about ``buckets / SEGMENTS`` of the keys: call it with a
        small number between checkpoints.
        """
        trees = self.trees
        if trees is None:
            raise RuntimeError("no trees attached")
        stop = min(SEGMENTS, trees.built + buckets)
        for segment in range(trees.built, stop):
            for key, h in self._buckets[segment].items():
                trees._apply(key, key_digest(key.encode("utf-8")), h)
        trees.built = stop
        return trees.ready
