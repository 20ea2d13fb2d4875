"""The log engine's key directory and the per-segment accounting derived from it.

:class:`LogIndex` is the state the event loop owns: key -> location of the key's newest record,
the delete markers still on disk, each key's record hash, and per segment its bytes, live bytes,
records, marker bytes and lowest ``seq``. It changes in three places only: a group commit installs
its batch, compaction applies its result (compare-and-set per key: a write that raced the
compaction wins), quarantine forgets a record; and it decides which segments compaction may take
and when an obsolete one may go (Low-Water Mark). No I/O, no trio: worker threads are only ever
handed snapshots of it.

A location is one int (one small object per key keeps a million keys cheap): seq in the top bits,
so comparing two locations compares their age, then segment id, offset and record length. Owned
by the event loop; worker threads are only ever handed snapshots of it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator

from gossipkv._merkle import RecordHashes

from ._log_format import HEADER_SIZE

OFF_BITS = 32
SEG_SHIFT = 64
SEQ_SHIFT = 96
_MASK32 = (1 << 32) - 1


def pack(seq: int, seg: int, off: int, length: int) -> int:
    return (seq << SEQ_SHIFT) | (seg << SEG_SHIFT) | (off << OFF_BITS) | length


def seg_of(loc: int) -> int:
    return (loc >> SEG_SHIFT) & _MASK32


def off_of(loc: int) -> int:
    return (loc >> OFF_BITS) & _MASK32


def len_of(loc: int) -> int:
    return loc & _MASK32


def seq_of(loc: int) -> int:
    return loc >> SEQ_SHIFT


SHARDS = 256
SHARD_MASK = SHARDS - 1


class KeyDir:
    """The key directory: key -> packed location of its newest record.

    Split over many small dicts: growing one dict of a million keys re-hashes it in a single C
    call that holds the GIL for tens of milliseconds (an event-loop stall); shards keep every
    resize hundreds of times smaller. Hot paths index ``shards[hash(key) & SHARD_MASK]`` directly.
    """

    __slots__ = ("shards",)

    def __init__(self) -> None:
        self.shards: list[dict[str, int]] = [{} for _ in range(SHARDS)]

    def get(self, key: str) -> int | None:
        return self.shards[hash(key) & SHARD_MASK].get(key)

    def __getitem__(self, key: str) -> int:
        return self.shards[hash(key) & SHARD_MASK][key]

    def __setitem__(self, key: str, loc: int) -> None:
        self.shards[hash(key) & SHARD_MASK][key] = loc

    def __delitem__(self, key: str) -> None:
        del self.shards[hash(key) & SHARD_MASK][key]

    def __len__(self) -> int:
        return sum(len(d) for d in self.shards)

    def snapshot_keys(self) -> list[str]:
        """A snapshot of the keys."""
        out: list[str] = []
        for d in self.shards:
            out.extend(d)
        return out

    def items(self) -> list[tuple[str, int]]:
        """A snapshot of ``(key, location)`` pairs."""
        out: list[tuple[str, int]] = []
        for d in self.shards:
            out.extend(d.items())
        return out

    def locations(self) -> Iterator[int]:
        for d in self.shards:
            yield from d.values()


class Moves:
    """The records a compaction copied, or dropped (a delete marker: ``new_segs[i] == 0``).

    Arrays and one buffer of keys, no object per record: about 30 bytes and the key per move
    (a list of str and two 128-bit ints cost ~170 bytes: 35 MB to compact 200k keys). The
    worker thread copies from them too: everything it needs to write a record and its hint
    entry is here.
    """

    __slots__ = ("key_ends", "keys", "lens", "new_offs", "new_segs", "old_offs", "old_segs", "seqs")

    def __init__(self) -> None:
        self.keys = bytearray()
        self.key_ends = array("I")
        self.seqs = array("Q")
        self.old_segs = array("I")
        self.old_offs = array("I")
        self.lens = array("I")
        self.new_segs = array("I")
        self.new_offs = array("I")

    def add(
        self,
        kb: bytes | bytearray | memoryview,
        seq: int,
        old_seg: int,
        old_off: int,
        length: int,
        new_seg: int,
        new_off: int,
    ) -> None:
        self.keys += kb
        self.key_ends.append(len(self.keys))
        self.seqs.append(seq)
        self.old_segs.append(old_seg)
        self.old_offs.append(old_off)
        self.lens.append(length)
        self.new_segs.append(new_seg)
        self.new_offs.append(new_off)

    def __len__(self) -> int:
        return len(self.seqs)


class LogIndex:
    """The key directory, delete markers, record hashes and per-segment accounting."""

    def __init__(self) -> None:
        self.keydir = KeyDir()
        self.record_hashes = RecordHashes()
        #: Delete markers still on disk: key -> packed location (the key is not in the keydir).
        self.markers: dict[str, int] = {}
        self.seg_bytes: dict[int, int] = {}
        self.seg_live: dict[int, int] = {}
        self.seg_records: dict[int, int] = {}
        #: Bytes of the kept delete markers in each segment.
        self.seg_markers: dict[int, int] = {}
        #: The lowest record ``seq`` in each segment (a marker is dropped only when no segment
        #: with superseded records below its ``seq`` remains).
        self.seg_min_seq: dict[int, int] = {}
        #: In-flight reads (and quarantine copies) per segment: a pinned segment is not deleted.
        self.pins: dict[int, int] = {}
        #: Compacted segments waiting for their last reference to go (Low-Water Mark).
        self.obsolete: set[int] = set()

    def register(self, seg: int) -> None:
        """A new, empty segment."""
        self.seg_bytes.setdefault(seg, 0)
        self.seg_records.setdefault(seg, 0)
        self.seg_live.setdefault(seg, 0)

    def install(
        self, keys: list[str], locs: list[int], kbs: list[bytes], hashes: list[int]
    ) -> None:
        """A group commit's records, now on disk at ``locs``."""
        shards, live = self.keydir.shards, self.seg_live
        seg_bytes, seg_records = self.seg_bytes, self.seg_records
        markers = self.markers
        set_hash, drop_hash = self.record_hashes.set, self.record_hashes.discard
        for key, loc, kb, h in zip(keys, locs, kbs, hashes, strict=True):
            shard = shards[hash(key) & SHARD_MASK]
            old = shard.get(key)
            if old is not None:
                live[seg_of(old)] -= len_of(old)
            seg = seg_of(loc)
            length = len_of(loc)
            if markers:
                self.forget_marker(key)
            if length == HEADER_SIZE + len(kb):
                # A delete marker: the key is gone; the marker's bytes count as garbage (it
                # is kept only until compaction may drop it).
                if old is not None:
                    del shard[key]
                drop_hash(key)
                markers[key] = loc
                self.seg_markers[seg] = self.seg_markers.get(seg, 0) + length
            else:
                shard[key] = loc
                set_hash(key, h, kb)
                live[seg] = live.get(seg, 0) + length
            seg_bytes[seg] = seg_bytes.get(seg, 0) + length
            seg_records[seg] = seg_records.get(seg, 0) + 1
            self.seg_min_seq.setdefault(seg, seq_of(loc))

    def forget_marker(self, key: str) -> None:
        old = self.markers.pop(key, None)
        if old is not None:
            self.seg_markers[seg_of(old)] -= len_of(old)

    def forget(self, key: str, loc: int) -> bool:
        """Forget ``key``'s unreadable record at ``loc`` unless a newer one was installed since
        (compare-and-set); whether it was forgotten."""
        if self.keydir.get(key) != loc:
            return False
        del self.keydir[key]
        self.record_hashes.discard(key)
        seg = seg_of(loc)
        self.seg_live[seg] = self.seg_live.get(seg, 0) - len_of(loc)
        return True

    # --- compaction ------------------------------------------------------------------------

    def victims(self, wanted: Callable[[int, int, int], bool], active: int) -> list[int]:
        """Sealed segments compaction should take: ``wanted(seg, live, total)``."""
        return sorted(
            seg
            for seg, total in self.seg_bytes.items()
            if seg != active
            and seg not in self.obsolete
            and total > 0
            and wanted(seg, self.seg_live.get(seg, 0), total)
        )

    def droppable_below(self, victim: int) -> int:
        """A delete marker in ``victim`` with a ``seq`` at most this may be dropped: every other
        segment on disk that may hold an older record of its key (one with superseded records)
        starts above it. Fully live segments hold no superseded record, so they never block."""
        floor = 1 << 62
        for seg, total in self.seg_bytes.items():
            if seg == victim:
                continue
            kept = self.seg_live.get(seg, 0) + self.seg_markers.get(seg, 0)
            if seg in self.obsolete or kept < total:
                floor = min(floor, self.seg_min_seq.get(seg, 1 << 62))
        return floor - 1

    def add_outputs(self, outputs: dict[int, tuple[int, int, int]]) -> None:
        """Compaction outputs (``seg -> (size, records, lowest seq)``), before their moves."""
        for seg, (size, records, min_seq) in outputs.items():
            self.seg_bytes[seg] = size
            self.seg_records[seg] = records
            self.seg_live.setdefault(seg, 0)
            self.seg_min_seq[seg] = min_seq

    def apply_moves(self, moves: Moves, start: int, stop: int) -> None:
        """Point the keys of ``moves[start:stop]`` at their copies, each only if its location
        is still the one compaction copied (a put or delete since then wins)."""
        keydir, live, markers = self.keydir, self.seg_live, self.markers
        keys, ends = memoryview(moves.keys), moves.key_ends
        seqs, lens = moves.seqs, moves.lens
        old_segs, old_offs, new_segs, new_offs = (
            moves.old_segs,
            moves.old_offs,
            moves.new_segs,
            moves.new_offs,
        )
        begin = ends[start - 1] if start else 0
        for i in range(start, min(stop, len(seqs))):
            end = ends[i]
            key = str(keys[begin:end], "utf-8", "surrogateescape")
            begin = end
            seq, length, new_seg = seqs[i], lens[i], new_segs[i]
            old = pack(seq, old_segs[i], old_offs[i], length)
            new = pack(seq, new_seg, new_offs[i], length) if new_seg else 0
            if markers.get(key) == old:
                # A delete marker copied (``new``) or dropped (0), unless a put superseded it.
                self.forget_marker(key)
                if new:
                    markers[key] = new
                    self.seg_markers[new_seg] = self.seg_markers.get(new_seg, 0) + length
                continue
            if keydir.get(key) == old:
                keydir[key] = new
                live[old_segs[i]] -= length
                live[new_seg] = live.get(new_seg, 0) + length

    def take_deletable(self) -> list[int]:
        """Obsolete segments no key, marker or in-flight read references any more, forgotten
        here (Low-Water Mark); the caller deletes their files."""
        ready = [
            s
            for s in self.obsolete
            if self.pins.get(s, 0) == 0
            and self.seg_live.get(s, 0) <= 0
            and self.seg_markers.get(s, 0) <= 0
        ]
        for seg in ready:
            self.obsolete.discard(seg)
            self.seg_bytes.pop(seg, None)
            self.seg_live.pop(seg, None)
            self.seg_records.pop(seg, None)
            self.seg_markers.pop(seg, None)
            self.seg_min_seq.pop(seg, None)
            self.pins.pop(seg, None)
        return ready
