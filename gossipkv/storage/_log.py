"""The durable log engine: Write-Ahead Log as a Segmented Log, bitcask-style.

Owns the data dir: append-only segment files of checksummed, length-prefixed records, an in-memory
key directory (key -> where its newest record is), group commit with an fsync policy, segment roll,
hint files for fast start, recovery (torn-tail truncation, corrupt-record skipping) and background
compaction of sealed segments guarded by a Low-Water Mark.

Patterns: *Write-Ahead Log* (a put is acknowledged only once its record is on disk under the fsync
policy), *Segmented Log* (the log is split into segments that are sealed at a size and compacted
whole), *Low-Water Mark* (an obsolete segment is deleted only once no key-directory entry and no
in-flight read still references it).

On disk, in the data dir::

  LOCK              flock()ed by the owning process (holds its pid)
  00000001.seg      records: magic(2) crc32(4) value_len(4) seq(8) key_len(2) key value
  00000001.hint     for a sealed segment: the segment's size and crc32, then one
                    (seq, offset, length, key) per record, then a crc32 of the hint itself

Every record carries a global sequence number, so recovery picks the newest record of a key by
``seq`` regardless of which segment (original or compacted) holds it. Records are read back and
checksummed on every get. A record that fails its checksum or cannot be decoded is never served as
data: it is *quarantined* (copied into ``quarantine/`` beside the segments, counted, logged, and
forgotten by the key directory, so the key reads as absent here and the data path repairs it from
the other replicas), and the peer keeps serving.

Beside the key directory it keeps each key's record hash (:mod:`gossipkv._merkle`, for the
anti-entropy Merkle trees): set when a put is installed, dropped when a record is quarantined or
a delete marker is installed, and recomputed from the newest record of each key at recovery.

A delete appends a *delete marker*: a record with an empty value (no clock encodes to zero bytes).
The key directory forgets the key and a small marker directory remembers where the marker is,
because older records of the key may still sit in other segments and recovery, which keeps the
newest record of each key by ``seq``, must find the marker newer than all of them. Compaction
drops a marker once no other segment that may hold an older record of its key remains on disk
(one whose lowest ``seq`` is below the marker's and that holds superseded records), so a crash at
any point of a compaction can never bring a deleted key back; ``compact()`` runs a second pass
for the markers the first one had to keep.

All file I/O and fsync runs in worker threads (``trio.to_thread.run_sync``); the event loop only
touches the in-memory key directory. Writers apply backpressure: at most ``max_pending_writes`` puts
wait for the committer at once; more wait for a slot.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import trio

from gossipkv import _dvv
from gossipkv._errors import (
    DataDirError,
    StorageClosed,
    StorageCorrupt,
    StorageError,
    StorageFull,
)
from gossipkv._merkle import RecordHashes, record_hash

from ._base import (
    DEFAULT_LIMITS,
    Clock,
    FsyncPolicy,
    StorageEngine,
    StorageLimits,
    StorageStatistics,
    decode_clock,
    encode_clock,
    encode_key,
    partition_digests,
)

_log = logging.getLogger("gossipkv.storage")

MAGIC = b"\xd7\x4b"
# magic, crc32, value_len, seq, key_len
_HEADER = struct.Struct("<2sIIQH")
HEADER_SIZE = _HEADER.size
_HINT_MAGIC = b"GKVHINT1"
_HINT_HEAD = struct.Struct("<8sQI")  # magic, segment size, segment crc32
_HINT_ENTRY = struct.Struct("<QIIH")  # seq, offset, record length, key length
_SEG_SUFFIX = ".seg"
_HINT_SUFFIX = ".hint"
_TMP_SUFFIX = ".tmp"

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PENDING_WRITES = 4096
# A sealed segment whose live bytes fall below this share is compacted in the background.
DEFAULT_COMPACT_BELOW = 0.5
_MAX_COMMITS_IN_FLIGHT = 2
_CHECKPOINT_EVERY = 2048

# A key-directory location packed in one int (one small object per key keeps 1M keys cheap):
# seq in the top bits, so comparing two locations compares their age.
_OFF_BITS = 32
_SEG_SHIFT = 64
_SEQ_SHIFT = 96
_MASK32 = (1 << 32) - 1


def _pack(seq: int, seg: int, off: int, length: int) -> int:
    return (seq << _SEQ_SHIFT) | (seg << _SEG_SHIFT) | (off << _OFF_BITS) | length


def _seg_of(loc: int) -> int:
    return (loc >> _SEG_SHIFT) & _MASK32


def _off_of(loc: int) -> int:
    return (loc >> _OFF_BITS) & _MASK32


def _len_of(loc: int) -> int:
    return loc & _MASK32


def _seq_of(loc: int) -> int:
    return loc >> _SEQ_SHIFT


def encode_record(seq: int, key: bytes, value: bytes) -> bytes:
    """One checksummed, length-prefixed record."""
    body = struct.pack("<IQH", len(value), seq, len(key)) + key + value
    return MAGIC + struct.pack("<I", zlib.crc32(body)) + body


class _Unreadable(NamedTuple):
    """A record read back that failed its checksum (instead of its value bytes)."""

    reason: str


QUARANTINE_DIR = "quarantine"


def _seg_name(seg: int) -> str:
    return f"{seg:08d}{_SEG_SUFFIX}"


def _hint_name(seg: int) -> str:
    return f"{seg:08d}{_HINT_SUFFIX}"


def _storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return StorageFull(f"{what}: the data dir's file system is full ({exc.strerror})")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"{what}: the data dir is read-only ({exc.strerror})")
    return StorageError(f"{what}: {exc.strerror or exc}")


# --- scanning segments (worker threads) -------------------------------------------------------


class Entries:
    """Record index of one segment as parallel lists (key, seq, offset, length).

    Parallel lists of bytes and ints hold no GC-tracked objects per record, so a million entries
    cost the cyclic garbage collector nothing (a list of tuples would stall the event loop).
    """

    __slots__ = ("keys", "lens", "offs", "seqs")

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.seqs: list[int] = []
        self.offs: list[int] = []
        self.lens: list[int] = []

    def append(self, key: bytes, seq: int, off: int, length: int) -> None:
        self.keys.append(key)
        self.seqs.append(seq)
        self.offs.append(off)
        self.lens.append(length)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[bytes, int, int, int]:
        return self.keys[i], self.seqs[i], self.offs[i], self.lens[i]

    def __iter__(self) -> Iterator[tuple[bytes, int, int, int]]:
        return zip(self.keys, self.seqs, self.offs, self.lens, strict=True)

    def hint_body(self) -> bytes:
        pack = _HINT_ENTRY.pack
        return b"".join(
            pack(seq, off, length, len(key)) + key
            for key, seq, off, length in zip(
                self.keys, self.seqs, self.offs, self.lens, strict=True
            )
        )


_SHARDS = 256
_SHARD_MASK = _SHARDS - 1


class KeyDir:
    """The key directory: key -> packed location of its newest record.

    Split over many small dicts: growing one dict of a million keys re-hashes it in a single C
    call that holds the GIL for tens of milliseconds (an event-loop stall); shards keep every
    resize hundreds of times smaller.
    """

    __slots__ = ("shards",)

    def __init__(self) -> None:
        self.shards: list[dict[str, int]] = [{} for _ in range(_SHARDS)]

    def get(self, key: str) -> int | None:
        return self.shards[hash(key) & _SHARD_MASK].get(key)

    def __getitem__(self, key: str) -> int:
        return self.shards[hash(key) & _SHARD_MASK][key]

    def __setitem__(self, key: str, loc: int) -> None:
        self.shards[hash(key) & _SHARD_MASK][key] = loc

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


@dataclass
class _ScanResult:
    entries: Entries
    valid_end: int
    corrupt: int
    #: ``(start, end, key or None)`` of each damaged span skipped (the key when its header
    #: still names one), for quarantine.
    damaged: list[tuple[int, int, bytes | None]] = field(default_factory=list)


def _record_at(data: bytes | memoryview, pos: int) -> tuple[bytes, int, int] | None:
    """(key, seq, length) if a valid record starts at ``pos``, else None."""
    n = len(data)
    if n - pos < HEADER_SIZE:
        return None
    magic, crc, vlen, seq, klen = _HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + klen + vlen
    if magic != MAGIC or end > n:
        return None
    if zlib.crc32(memoryview(data)[pos + 6 : end]) != crc:
        return None
    key = bytes(data[pos + HEADER_SIZE : pos + HEADER_SIZE + klen])
    return key, seq, end - pos


def scan_segment(data: bytes) -> _ScanResult:
    """Every valid record of a segment's bytes; corrupt records are skipped and counted.

    ``valid_end`` is where the last valid record ends: anything after it is a torn tail (a write
    cut short by a crash, or damage with no valid record after it).
    """
    entries = Entries()
    pos = 0
    corrupt = 0
    damaged: list[tuple[int, int, bytes | None]] = []
    n = len(data)
    view = memoryview(data)
    while pos < n:
        rec = _record_at(view, pos)
        if rec is not None:
            key, seq, length = rec
            entries.append(key, seq, pos, length)
            pos += length
            continue
        # Damaged here: resynchronise on the next magic that starts a valid record.
        nxt = data.find(MAGIC, pos + 1)
        while nxt != -1 and _record_at(view, nxt) is None:
            nxt = data.find(MAGIC, nxt + 1)
        if nxt == -1:
            break
        corrupt += 1
        damaged.append((pos, nxt, _key_in_header(view, pos, nxt)))
        pos = nxt
    valid_end = entries.offs[-1] + entries.lens[-1] if entries else 0
    return _ScanResult(entries, valid_end, corrupt, damaged)


def _key_in_header(data: memoryview, pos: int, end: int) -> bytes | None:
    """The key a damaged record's header still names, if its header looks intact."""
    if end - pos < HEADER_SIZE:
        return None
    magic, _, _, _, klen = _HEADER.unpack_from(data, pos)
    if magic != MAGIC or pos + HEADER_SIZE + klen > end:
        return None
    key = bytes(data[pos + HEADER_SIZE : pos + HEADER_SIZE + klen])
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return key or None


def _decode_hint(raw: bytes, seg_size: int, seg_crc: int) -> Entries | None:
    """The hint's entries if it is intact and matches the segment's size and checksum."""
    if len(raw) < _HINT_HEAD.size + 4:
        return None
    body, trailer = raw[:-4], raw[-4:]
    if zlib.crc32(body) != struct.unpack("<I", trailer)[0]:
        return None
    magic, size, crc = _HINT_HEAD.unpack_from(body, 0)
    if magic != _HINT_MAGIC or size != seg_size or crc != seg_crc:
        return None
    entries = Entries()
    keys, seqs, offs, lens = entries.keys, entries.seqs, entries.offs, entries.lens
    pos = _HINT_HEAD.size
    unpack = _HINT_ENTRY.unpack_from
    esize = _HINT_ENTRY.size
    n = len(body)
    while pos < n:
        seq, off, length, klen = unpack(body, pos)
        pos += esize
        keys.append(body[pos : pos + klen])
        seqs.append(seq)
        offs.append(off)
        lens.append(length)
        pos += klen
    return entries


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# --- the engine ---------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Records waiting for one group commit; every waiter is released by ``done``."""

    keys: list[str] = field(default_factory=list)
    kbs: list[bytes] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    roll: bool = False


@dataclass
class _Reads:
    """Gets waiting for one batched read."""

    locs: list[int] = field(default_factory=list)
    results: list[bytes | _Unreadable | BaseException] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Recovered:
    keydir: KeyDir
    record_hashes: RecordHashes
    seg_bytes: dict[int, int]
    seg_records: dict[int, int]
    max_seq: int
    max_seg: int
    corrupt: int
    torn: int
    hints_loaded: int
    damaged_keys: list[str]
    markers: dict[str, int]
    seg_min_seq: dict[int, int]


class LogEngine(StorageEngine):
    """A :class:`StorageEngine` on a Write-Ahead, Segmented Log in a data dir.

    Open it with :func:`open_log_engine` (or :func:`gossipkv.storage.open_storage`); the engine runs
    its committer, reader and compactor tasks in a nursery that the context manager owns.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: FsyncPolicy,
        limits: StorageLimits,
        segment_bytes: int,
        max_pending_writes: int,
        compact_below: float,
    ) -> None:
        self._path = path
        self._fsync = fsync
        self._limits = limits
        self._segment_bytes = segment_bytes
        self._compact_below = compact_below
        self.incarnation = int.from_bytes(os.urandom(8), "big")
        self._lock_fd: int | None = None
        self._keydir = KeyDir()
        self.record_hashes = RecordHashes()
        self._seg_bytes: dict[int, int] = {}
        self._seg_live: dict[int, int] = {}
        self._seg_records: dict[int, int] = {}
        self._read_fds: dict[int, int] = {}
        self._pins: dict[int, int] = {}
        self._obsolete: set[int] = set()
        #: Delete markers still on disk: key -> packed location (the key is not in the keydir).
        self._markers: dict[str, int] = {}
        #: Bytes of the kept delete markers in each segment.
        self._seg_markers: dict[int, int] = {}
        #: The lowest record ``seq`` in each segment (a marker is dropped only when no segment
        #: with superseded records below its ``seq`` remains).
        self._seg_min_seq: dict[int, int] = {}
        self._seg_id_lock = threading.Lock()
        self._next_seg = 1
        self._seq = 1
        self._active = 0
        self._active_fd = -1
        self._active_size = 0
        self._active_crc = 0
        self._active_hint = bytearray()  # hint entries of the active segment, pre-encoded
        self._pending = _Batch()
        self._has_work = trio.Event()
        self._reads = _Reads()
        self._has_reads = trio.Event()
        self._max_pending = max_pending_writes
        self._in_flight = 0
        self._space = trio.lowlevel.ParkingLot()
        self._compact_lock = trio.Lock()
        self._compact_wanted = trio.Event()
        self._closing = False
        self._closed = False
        self._failed: StorageError | None = None
        self._committer_done = trio.Event()
        self._commits_in_flight = 0
        self._commit_lot = trio.lowlevel.ParkingLot()
        self._broken_at: int | None = None
        self._broken_error: StorageError | None = None
        # counters
        self._puts = 0
        self._gets = 0
        self._deletes = 0
        self._fsyncs = 0
        self._batches = 0
        self._batched = 0
        self._max_batch = 0
        self._compactions = 0
        self._compaction_errors = 0
        self._last_compaction_error = ""
        self._reclaimed = 0
        self._corrupt = 0
        self._damaged_at_open: list[str] = []
        self._quarantined = 0
        self._torn = 0
        self._hints_loaded = 0
        self._recovery_seconds = 0.0

    # --- opening and recovery ----------------------------------------------------------------

    def _open_sync(self) -> None:
        path = self._path
        if path.exists() and not path.is_dir():
            raise DataDirError(f"data dir {path} is a file, not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataDirError(f"cannot use data dir {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.pread(lock_fd, 32, 0).decode("ascii", "replace").strip() or "?"
            finally:
                os.close(lock_fd)
            raise DataDirError(
                f"data dir {path} is in use by another process (pid {holder}); "
                "stop it or choose another --data-dir"
            ) from exc
        self._lock_fd = lock_fd
        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            rec = self._recover_sync()
            self._keydir = rec.keydir
            self.record_hashes = rec.record_hashes
            self._seg_bytes = rec.seg_bytes
            self._seg_records = rec.seg_records
            self._seq = rec.max_seq + 1
            self._next_seg = rec.max_seg + 1
            self._corrupt = rec.corrupt
            self._damaged_at_open = rec.damaged_keys
            self._quarantined = rec.corrupt  # each damaged span was kept aside
            self._torn = rec.torn
            self._hints_loaded = rec.hints_loaded
            self._markers = rec.markers
            self._seg_min_seq = rec.seg_min_seq
            live: dict[int, int] = dict.fromkeys(rec.seg_bytes, 0)
            for loc in self._keydir.locations():
                seg = _seg_of(loc)
                live[seg] += _len_of(loc)
            self._seg_live = live
            for loc in self._markers.values():
                seg = _seg_of(loc)
                self._seg_markers[seg] = self._seg_markers.get(seg, 0) + _len_of(loc)
            for seg in self._seg_bytes:
                self._read_fds[seg] = os.open(path / _seg_name(seg), os.O_RDONLY)
            self._register_segment(self._start_segment_sync())
        except OSError as exc:
            self._close_files_sync()
            raise DataDirError(f"cannot use data dir {path}: {exc.strerror or exc}") from exc
        except BaseException:
            self._close_files_sync()
            raise

    def _recover_sync(self) -> _Recovered:
        path = self._path
        for leftover in path.glob(f"*{_TMP_SUFFIX}"):
            leftover.unlink()  # an unfinished compaction output; its inputs are still there
        segs = sorted(int(p.name[: -len(_SEG_SUFFIX)]) for p in path.glob(f"*{_SEG_SUFFIX}"))
        keydir = KeyDir()
        shards = keydir.shards
        # The record hashes are rebuilt from the records themselves (the segment is in memory
        # for its checksum anyway), never trusted from a hint file.
        record_hashes = RecordHashes()
        seg_bytes: dict[int, int] = {}
        seg_records: dict[int, int] = {}
        seg_min_seq: dict[int, int] = {}
        marker_locs: dict[str, int] = {}
        corrupt = torn = hints = 0
        damaged_keys: list[str] = []
        max_seq = 0
        for seg in segs:
            seg_path = path / _seg_name(seg)
            data = seg_path.read_bytes()
            crc = zlib.crc32(data)
            entries: Entries | None = None
            hint_path = path / _hint_name(seg)
            if hint_path.exists():
                entries = _decode_hint(hint_path.read_bytes(), len(data), crc)
                if entries is not None:
                    hints += 1
            if entries is None:
                scanned = scan_segment(data)
                entries = scanned.entries
                corrupt += scanned.corrupt
                for start, end, kb in scanned.damaged:
                    # Damage inside the segment (not a torn tail): keep the bytes for
                    # inspection, and have the key repaired from the other replicas.
                    self._keep_aside_sync(f"{seg:08d}-{start:010d}.rec", data[start:end])
                    if kb is not None:
                        damaged_keys.append(kb.decode("utf-8"))
                if scanned.valid_end < len(data):
                    # A torn tail: the crash cut a write short (nothing after it was acked).
                    torn += 1
                    with open(seg_path, "r+b") as f:
                        f.truncate(scanned.valid_end)
                        f.flush()
                        os.fsync(f.fileno())
                    data = data[: scanned.valid_end]
                    crc = zlib.crc32(data)
                self._write_hint_sync(seg, len(data), crc, entries.hint_body())
            if not entries and not data:
                seg_path.unlink()
                hint_path.unlink(missing_ok=True)
                continue
            seg_bytes[seg] = len(data)
            seg_records[seg] = len(entries)
            if entries:
                seg_min_seq[seg] = min(entries.seqs)
            seg_shift = seg << _SEG_SHIFT
            for kb, seq, off, length in zip(
                entries.keys, entries.seqs, entries.offs, entries.lens, strict=True
            ):
                loc = (seq << _SEQ_SHIFT) | seg_shift | (off << _OFF_BITS) | length
                key = kb.decode("utf-8", "surrogateescape")
                shard = shards[hash(key) & _SHARD_MASK]
                if loc > shard.get(key, 0):
                    shard[key] = loc
                    value = data[off + HEADER_SIZE + len(kb) : off + length]
                    record_hashes.set(key, record_hash(kb, value), kb)
                if length == HEADER_SIZE + len(kb):  # a delete marker (an empty value)
                    marker_locs[key] = max(loc, marker_locs.get(key, 0))
                if seq > max_seq:
                    max_seq = seq
        # A key whose newest record is a delete marker is not stored: keep only the marker.
        markers: dict[str, int] = {}
        for key, loc in marker_locs.items():
            shard = shards[hash(key) & _SHARD_MASK]
            if shard.get(key) == loc:
                del shard[key]
                record_hashes.discard(key)
                markers[key] = loc
        return _Recovered(
            keydir,
            record_hashes,
            seg_bytes,
            seg_records,
            max_seq,
            max(segs, default=0),
            corrupt,
            torn,
            hints,
            damaged_keys,
            markers,
            seg_min_seq,
        )

    def _write_hint_sync(
        self, seg: int, size: int, crc: int, entries_body: bytes | bytearray
    ) -> None:
        final = self._path / _hint_name(seg)
        tmp = final.with_name(final.name + _TMP_SUFFIX)
        head = _HINT_HEAD.pack(_HINT_MAGIC, size, crc)
        # Written in pieces: concatenating a hint of a million entries would copy it twice while
        # holding the GIL.
        trailer = struct.pack("<I", zlib.crc32(entries_body, zlib.crc32(head)))
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(entries_body)
            f.write(trailer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def _alloc_segment_id(self) -> int:
        with self._seg_id_lock:
            seg = self._next_seg
            self._next_seg += 1
            return seg

    def _register_segment(self, seg: int) -> None:
        # Event-loop side (or before the tasks start): only the loop mutates the size maps.
        self._seg_bytes.setdefault(seg, 0)
        self._seg_records.setdefault(seg, 0)
        self._seg_live.setdefault(seg, 0)

    def _start_segment_sync(self) -> int:
        seg = self._alloc_segment_id()
        seg_path = self._path / _seg_name(seg)
        fd = os.open(seg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self._read_fds[seg] = os.open(seg_path, os.O_RDONLY)
            _fsync_dir(self._path)  # the new file's name must survive a crash too
        except BaseException:
            os.close(fd)
            raise
        self._active, self._active_fd, self._active_size = seg, fd, 0
        self._active_crc, self._active_hint = 0, bytearray()
        return seg

    def _seal_active_sync(self) -> int:
        """fsync and close the active segment, write its hint; returns its id."""
        seg, fd = self._active, self._active_fd
        os.fsync(fd)
        os.close(fd)
        self._active_fd = -1
        self._write_hint_sync(seg, self._active_size, self._active_crc, self._active_hint)
        self._active_hint = bytearray()
        return seg

    def _close_files_sync(self) -> None:
        if self._active_fd >= 0:
            os.close(self._active_fd)
            self._active_fd = -1
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # --- writes: group commit ----------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closing or self._closed:
            raise StorageClosed(f"the storage engine on {self._path} is closed")
        if self._failed is not None:
            raise StorageError(f"the storage engine on {self._path} failed earlier: {self._failed}")

    async def put(self, key: str, clock: Clock) -> None:
        self._check_usable()
        kb = encode_key(key, self._limits)
        value = encode_clock(clock, self._limits)
        await self._append(key, kb, value)
        self._puts += 1

    async def delete(self, key: str) -> bool:
        """Append a delete marker for ``key`` (see the module docstring); ``False`` without
        writing anything when the key is not stored."""
        self._check_usable()
        kb = encode_key(key, self._limits)
        if self._keydir.get(key) is None:
            await trio.lowlevel.checkpoint()
            return False
        await self._append(key, kb, b"")
        self._deletes += 1
        return True

    async def _append(self, key: str, kb: bytes, value: bytes) -> None:
        # Backpressure: at most max_pending_writes puts wait for the disk; more park here.
        # (A ParkingLot rather than a Semaphore: no extra schedule point when there is room.)
        while self._in_flight >= self._max_pending:
            await self._space.park()
            self._check_usable()
        self._in_flight += 1
        try:
            seq = self._seq
            self._seq += 1
            batch = self._pending
            batch.keys.append(key)
            batch.kbs.append(kb)
            batch.seqs.append(seq)
            batch.records.append(encode_record(seq, kb, value))
            batch.hashes.append(record_hash(kb, value))
            self._has_work.set()
            await batch.done.wait()
        finally:
            self._in_flight -= 1
            self._space.unpark()
        if batch.error is not None:
            raise batch.error

    def _roll_sync(self) -> tuple[int, int]:
        """Seal the active segment and start the next one (worker thread, no write in flight)."""
        sealed = self._seal_active_sync()
        return sealed, self._start_segment_sync()

    def _write_sync(
        self,
        fd: int,
        seg: int,
        start: int,
        batch: _Batch,
        prev_written: threading.Event,
        written: threading.Event,
    ) -> tuple[list[int], int]:
        """Write one batch at its reserved offset (worker thread); returns locations, fsyncs.

        The bytes go to the file strictly in offset order (``prev_written``), so a crash leaves
        a prefix of the log, never a hole followed by later records; only the fsyncs overlap.
        """
        prev_written.wait()
        try:
            return self._write_ordered(fd, seg, start, batch, written)
        finally:
            written.set()

    def _write_ordered(
        self, fd: int, seg: int, start: int, batch: _Batch, written: threading.Event
    ) -> tuple[list[int], int]:
        locs: list[int] = []
        fsyncs = 0
        off = start
        if self._fsync is FsyncPolicy.ALWAYS:
            for seq, rec in zip(batch.seqs, batch.records, strict=True):
                _write_all(fd, rec, off)
                os.fdatasync(fd)
                fsyncs += 1
                locs.append(_pack(seq, seg, off, len(rec)))
                off += len(rec)
            return locs, fsyncs
        for seq, rec in zip(batch.seqs, batch.records, strict=True):
            locs.append(_pack(seq, seg, off, len(rec)))
            off += len(rec)
        _write_all(fd, b"".join(batch.records), start)
        written.set()  # the next batch may write now, while this one waits for its fsync
        if self._fsync is FsyncPolicy.BATCH:
            os.fdatasync(fd)
            fsyncs += 1
        return locs, fsyncs

    async def _committer(self) -> None:
        """Group commit: take what is pending, reserve its place in the segment, write it.

        Up to two batches are on their way to the disk at once (Request Pipeline), so the
        writers acknowledged by one batch prepare the next while the other is in fsync.
        Batches complete, install and acknowledge strictly in offset order.
        """
        try:
            prev_done = trio.Event()
            prev_done.set()
            prev_written = threading.Event()
            prev_written.set()
            async with trio.open_nursery() as writes:
                while True:
                    await self._has_work.wait()
                    self._has_work = trio.Event()
                    await self._repair_after_failure()
                    batch, self._pending = self._pending, _Batch()
                    if self._active_size >= self._segment_bytes or (
                        batch.roll and self._active_size > 0
                    ):
                        await self._wait_commits(0)
                        await self._repair_after_failure()
                        try:
                            _, started = await trio.to_thread.run_sync(self._roll_sync)
                        except OSError as exc:
                            batch.error = _storage_error(exc, f"roll of a segment in {self._path}")
                            batch.done.set()
                            continue
                        self._register_segment(started)
                        self._compact_wanted.set()
                    if batch.records and self._failed is None:
                        await self._wait_commits(_MAX_COMMITS_IN_FLIGHT - 1)
                        start = self._active_size
                        self._active_size += sum(len(r) for r in batch.records)
                        done = trio.Event()
                        written = threading.Event()
                        self._commits_in_flight += 1
                        writes.start_soon(
                            self._commit, batch, start, prev_done, done, prev_written, written
                        )
                        prev_done, prev_written = done, written
                    else:
                        if self._failed is not None and batch.records:
                            batch.error = self._failed
                        batch.done.set()
                    if self._closing and not self._pending.records:
                        await self._wait_commits(0)
                        await self._repair_after_failure()
                        return
        finally:
            self._committer_done.set()

    async def _wait_commits(self, at_most: int) -> None:
        while self._commits_in_flight > at_most:
            await self._commit_lot.park()

    async def _repair_after_failure(self) -> None:
        """After a failed write, cut the segment back to where it failed (nothing after it was
        acknowledged); called by the committer before it reserves any new offset."""
        if self._broken_at is None:
            return
        await self._wait_commits(0)
        cut, self._broken_at = self._broken_at, None
        try:
            await trio.to_thread.run_sync(os.ftruncate, self._active_fd, cut)
        except OSError as exc:
            self._failed = StorageError(f"cannot repair a failed write: {exc.strerror or exc}")
            return
        self._active_size = cut

    async def _commit(
        self,
        batch: _Batch,
        start: int,
        prev_done: trio.Event,
        done: trio.Event,
        prev_written: threading.Event,
        written: threading.Event,
    ) -> None:
        try:
            error: OSError | None = None
            locs: list[int] = []
            fsyncs = 0
            try:
                locs, fsyncs = await trio.to_thread.run_sync(
                    self._write_sync,
                    self._active_fd,
                    self._active,
                    start,
                    batch,
                    prev_written,
                    written,
                )
            except OSError as exc:
                error = exc
            await prev_done.wait()  # acknowledge in offset order
            if self._broken_at is not None:
                # An earlier batch failed: this one lies beyond the cut and is not stored.
                batch.error = self._broken_error
            elif error is not None:
                self._broken_at = start
                self._broken_error = _storage_error(error, f"write to {self._path}")
                batch.error = self._broken_error
                self._has_work.set()  # wake the committer to cut the failed bytes off now
            else:
                self._fsyncs += fsyncs
                n = len(locs)
                self._batches += 1
                self._batched += n
                self._max_batch = max(self._max_batch, n)
                self._install(batch.keys, locs, batch.kbs, batch.hashes)
                crc, hint, pack = self._active_crc, self._active_hint, _HINT_ENTRY.pack
                for rec, kb, seq, loc in zip(
                    batch.records, batch.kbs, batch.seqs, locs, strict=True
                ):
                    crc = zlib.crc32(rec, crc)
                    hint += pack(seq, _off_of(loc), len(rec), len(kb))
                    hint += kb
                self._active_crc = crc
        finally:
            self._commits_in_flight -= 1
            self._commit_lot.unpark_all()
            batch.done.set()
            done.set()

    def _install(
        self, keys: list[str], locs: list[int], kbs: list[bytes], hashes: list[int]
    ) -> None:
        shards, live = self._keydir.shards, self._seg_live
        seg_bytes, seg_records = self._seg_bytes, self._seg_records
        markers = self._markers
        set_hash, drop_hash = self.record_hashes.set, self.record_hashes.discard
        for key, loc, kb, h in zip(keys, locs, kbs, hashes, strict=True):
            shard = shards[hash(key) & _SHARD_MASK]
            old = shard.get(key)
            if old is not None:
                live[_seg_of(old)] -= _len_of(old)
            seg = _seg_of(loc)
            length = _len_of(loc)
            if markers:
                self._forget_marker(key)
            if length == HEADER_SIZE + len(kb):
                # A delete marker: the key is gone; the marker's bytes count as garbage (it
                # is kept only until compaction may drop it).
                if old is not None:
                    del shard[key]
                drop_hash(key)
                markers[key] = loc
                self._seg_markers[seg] = self._seg_markers.get(seg, 0) + length
            else:
                shard[key] = loc
                set_hash(key, h, kb)
                live[seg] = live.get(seg, 0) + length
            seg_bytes[seg] = seg_bytes.get(seg, 0) + length
            seg_records[seg] = seg_records.get(seg, 0) + 1
            self._seg_min_seq.setdefault(seg, _seq_of(loc))

    def _forget_marker(self, key: str) -> None:
        old = self._markers.pop(key, None)
        if old is not None:
            self._seg_markers[_seg_of(old)] -= _len_of(old)

    # --- reads: batched --------------------------------------------------------------------------

    def stored_bytes(self, key: str) -> int | None:
        loc = self._keydir.get(key)
        if loc is None:
            return None
        return _len_of(loc) - HEADER_SIZE - len(key.encode("utf-8"))

    async def get(self, key: str) -> Clock | None:
        """The stored clock of ``key``; ``None`` if it was never stored here or its record was
        unreadable (then quarantined: see the module docstring).

        Raises:
          InvalidKey: a bad key. StorageError: an I/O error. StorageClosed: closed.
        """
        self._check_usable()
        encode_key(key, self._limits)
        self._gets += 1
        loc = self._keydir.get(key)
        if loc is None:
            await trio.lowlevel.checkpoint()
            return None
        raw = (await self._read_many([loc]))[0]
        return await self._decoded(key, loc, raw)

    async def _decoded(self, key: str, loc: int, raw: bytes | _Unreadable) -> Clock | None:
        """Decode a record read back, or quarantine it when it is unreadable (``None``)."""
        if isinstance(raw, _Unreadable):
            reason = raw.reason
        else:
            try:
                return decode_clock(raw, f"{self._path} key {key!r}", self._limits)
            except StorageCorrupt as exc:
                reason = str(exc)
        await self._quarantine(key, loc, reason)
        return None

    async def _quarantine(self, key: str, loc: int, reason: str) -> None:
        """Copy an unreadable record aside and forget it, unless a newer record of ``key`` was
        installed meanwhile (compare-and-set on the key directory, as compaction does)."""
        seg = _seg_of(loc)
        self._pins[seg] = self._pins.get(seg, 0) + 1  # the copy reads the segment
        try:
            kept = await trio.to_thread.run_sync(self._copy_aside_sync, loc)
        except OSError as exc:
            kept = f"(not kept: {exc.strerror or exc})"
        finally:
            self._pins[seg] -= 1
        if self._keydir.get(key) != loc:
            return  # superseded by a newer write: nothing to forget
        del self._keydir.shards[hash(key) & _SHARD_MASK][key]
        self.record_hashes.discard(key)
        self._seg_live[seg] = self._seg_live.get(seg, 0) - _len_of(loc)
        self._quarantined += 1
        _log.warning("quarantined the unreadable record of %r: %s; copy %s", key, reason, kept)
        if self.on_quarantine is not None:
            self.on_quarantine(key)

    def damaged_at_open(self) -> list[str]:
        """Keys whose record was found damaged inside a segment when the engine opened (kept
        in ``quarantine/``; the key now reads as an older version or as absent here)."""
        return list(self._damaged_at_open)

    def _copy_aside_sync(self, loc: int) -> str:
        seg, off, length = _seg_of(loc), _off_of(loc), _len_of(loc)
        fd = self._read_fds.get(seg)
        if fd is None:
            raise OSError(errno.ENOENT, f"segment {seg} is gone")
        return self._keep_aside_sync(f"{seg:08d}-{off:010d}.rec", os.pread(fd, length, off))

    def _keep_aside_sync(self, name: str, raw: bytes) -> str:
        where = self._path / QUARANTINE_DIR
        where.mkdir(exist_ok=True)
        target = where / name
        tmp = target.with_suffix(_TMP_SUFFIX)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(out, raw, 0)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, target)
        _fsync_dir(where)
        return str(target)

    async def _read_many(self, locs: list[int]) -> list[bytes | _Unreadable]:
        # Pin the segments now, in the same step as the key-directory lookup that produced the
        # locations, so compaction cannot delete them before the read runs (Low-Water Mark).
        segs = {_seg_of(loc) for loc in locs}
        pins = self._pins
        for seg in segs:
            pins[seg] = pins.get(seg, 0) + 1
        try:
            reads = self._reads
            first = len(reads.locs)
            reads.locs.extend(locs)
            self._has_reads.set()
            await reads.done.wait()
        finally:
            for seg in segs:
                pins[seg] -= 1
            if self._obsolete:
                self._compact_wanted.set()  # the compactor deletes what is now unreferenced
        got = reads.results[first : first + len(locs)]
        if len(got) != len(locs):
            raise StorageClosed(f"the storage engine on {self._path} closed during a read")
        out: list[bytes | _Unreadable] = []
        for item in got:
            if isinstance(item, BaseException):
                raise item
            out.append(item)
        return out

    def _read_sync(self, locs: list[int]) -> list[bytes | _Unreadable | BaseException]:
        out: list[bytes | _Unreadable | BaseException] = []
        for loc in locs:
            seg, off, length = _seg_of(loc), _off_of(loc), _len_of(loc)
            fd = self._read_fds.get(seg)
            if fd is None:
                out.append(StorageError(f"segment {seg} is gone (engine closing?)"))
                continue
            try:
                raw = os.pread(fd, length, off)
            except OSError as exc:
                out.append(_storage_error(exc, f"read of segment {seg}"))
                continue
            rec = _record_at(raw, 0) if len(raw) == length else None
            if rec is None:
                out.append(_Unreadable(f"record at segment {seg} offset {off} failed its checksum"))
                continue
            klen = rec[0]
            out.append(raw[HEADER_SIZE + len(klen) :])
        return out

    async def _reader(self) -> None:
        while True:
            await self._has_reads.wait()
            self._has_reads = trio.Event()
            reads, self._reads = self._reads, _Reads()
            if not reads.locs:
                reads.done.set()
                continue
            try:
                reads.results = await trio.to_thread.run_sync(self._read_sync, reads.locs)
            except Exception as exc:
                reads.results = [StorageError(f"read failed: {exc!r}")] * len(reads.locs)
            finally:
                reads.done.set()

    async def keys(self, partition: int, partitions: int) -> list[str]:
        self._check_usable()
        snapshot = self._keydir.snapshot_keys()
        out: list[str] = []
        for i in range(0, len(snapshot), _CHECKPOINT_EVERY):
            await trio.lowlevel.checkpoint()
            out.extend(
                k
                for k in snapshot[i : i + _CHECKPOINT_EVERY]
                if _dvv.partition_of(k, partitions) == partition
            )
        out.sort()
        return out

    async def scan(self, partition: int, partitions: int) -> AsyncIterator[tuple[str, Clock]]:
        self._check_usable()
        keys: list[str] = []
        snapshot = self._keydir.snapshot_keys()
        for i in range(0, len(snapshot), _CHECKPOINT_EVERY):
            # Hashing a million keys is a CPU loop: give other tasks a turn between chunks.
            await trio.lowlevel.checkpoint()
            chunk_keys = snapshot[i : i + _CHECKPOINT_EVERY]
            keys.extend(k for k in chunk_keys if _dvv.partition_of(k, partitions) == partition)
        for i in range(0, len(keys), 256):
            chunk = [(k, self._keydir.get(k)) for k in keys[i : i + 256]]
            present = [(k, loc) for k, loc in chunk if loc is not None]
            raws = await self._read_many([loc for _, loc in present])
            for (key, loc), raw in zip(present, raws, strict=True):
                clock = await self._decoded(key, loc, raw)
                if clock is not None:
                    yield key, clock

    async def records(self, keys: list[str]) -> AsyncIterator[tuple[str, bytes]]:
        self._check_usable()
        for i in range(0, len(keys), 256):
            chunk = [(k, self._keydir.get(k)) for k in keys[i : i + 256]]
            present = [(k, loc) for k, loc in chunk if loc is not None]
            raws = await self._read_many([loc for _, loc in present])
            for (key, loc), raw in zip(present, raws, strict=True):
                if isinstance(raw, _Unreadable):
                    await self._quarantine(key, loc, raw.reason)
                else:
                    yield key, raw

    async def partition_hashes(self, partitions: int) -> dict[int, bytes]:
        self._check_usable()
        items = self._keydir.items()
        pairs: list[tuple[str, bytes]] = []
        for i in range(0, len(items), 1024):
            chunk = items[i : i + 1024]
            raws = await self._read_many([loc for _, loc in chunk])
            for (key, loc), raw in zip(chunk, raws, strict=True):
                if isinstance(raw, _Unreadable):
                    await self._quarantine(key, loc, raw.reason)
                else:
                    pairs.append((key, raw))
        return await trio.to_thread.run_sync(partition_digests, pairs, partitions)

    # --- compaction ------------------------------------------------------------------------------

    async def compact(self) -> None:
        """Seal the active segment and compact every sealed segment holding superseded records."""
        self._check_usable()
        batch = self._pending
        batch.roll = True  # seal the active segment so its superseded records can go too
        self._has_work.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        await self._compact(lambda seg, live, total: live < total)
        if self._markers:
            # The first pass keeps a marker while another victim still holds an older record
            # of its key; those victims are gone now, so the markers can go too.
            await self._compact(lambda seg, live, total: self._seg_markers.get(seg, 0) > 0)

    async def _compactor(self) -> None:
        while True:
            await self._compact_wanted.wait()
            self._compact_wanted = trio.Event()
            try:
                if self._obsolete:
                    await self._delete_obsolete()
                await self._compact(self._mostly_garbage)
            except (StorageError, OSError) as exc:
                # Background compaction failing (say, a full disk) must not take the engine
                # down: nothing was lost, the space is just not reclaimed yet. Retry on the
                # next roll.
                self._compaction_errors += 1
                self._last_compaction_error = str(exc)

    def _mostly_garbage(self, seg: int, live: int, total: int) -> bool:
        return live < total * self._compact_below

    def _droppable_below(self, victim: int) -> int:
        """A delete marker in ``victim`` with a ``seq`` at most this may be dropped: every other
        segment on disk that may hold an older record of its key (one with superseded records)
        starts above it. Fully live segments hold no superseded record, so they never block."""
        floor = 1 << 62
        for seg, total in self._seg_bytes.items():
            if seg == victim:
                continue
            kept = self._seg_live.get(seg, 0) + self._seg_markers.get(seg, 0)
            if seg in self._obsolete or kept < total:
                floor = min(floor, self._seg_min_seq.get(seg, 1 << 62))
        return floor - 1

    async def _compact(self, wanted: Callable[[int, int, int], bool]) -> None:
        async with self._compact_lock:
            victims = sorted(
                seg
                for seg, total in self._seg_bytes.items()
                if seg != self._active
                and seg not in self._obsolete
                and total > 0
                and wanted(seg, self._seg_live.get(seg, 0), total)
            )
            if not victims:
                return
            drop_below = {seg: self._droppable_below(seg) for seg in victims}
            writer = _CompactionWriter(self, drop_below)
            installed: list[_Moves] = []
            try:
                for seg in victims:
                    self._pins[seg] = self._pins.get(seg, 0) + 1
                    try:
                        moves = await trio.to_thread.run_sync(writer.copy_live, seg)
                    finally:
                        self._pins[seg] -= 1
                    await self._install_moves(moves)
                    installed.append(moves)
                await trio.to_thread.run_sync(writer.finish)
            except OSError as exc:
                # Point the keys back at the victims (still on disk) before dropping the outputs.
                for moves in installed:
                    back = _Moves()
                    back.keys, back.olds, back.news = moves.keys, moves.news, moves.olds
                    await self._install_moves(back)
                await trio.to_thread.run_sync(writer.abort)
                raise _storage_error(exc, "compaction") from exc
            for seg, (size, records) in writer.outputs.items():
                self._seg_bytes[seg] = size
                self._seg_records[seg] = records
                self._seg_min_seq[seg] = writer.min_seqs[seg]
            before = sum(self._seg_bytes[s] for s in victims)
            after = sum(size for size, _ in writer.outputs.values())
            self._reclaimed += max(0, before - after)
            self._compactions += 1
            self._obsolete.update(victims)
            await self._delete_obsolete()

    async def _install_moves(self, moves: _Moves) -> None:
        keydir, live, markers = self._keydir, self._seg_live, self._markers
        for i, (key, old, new) in enumerate(zip(moves.keys, moves.olds, moves.news, strict=True)):
            if i % _CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
            if markers.get(key) == old:
                # A delete marker copied (``new``) or dropped (0), unless a put superseded it.
                self._forget_marker(key)
                if new:
                    markers[key] = new
                    seg = _seg_of(new)
                    self._seg_markers[seg] = self._seg_markers.get(seg, 0) + _len_of(new)
                continue
            # Compare-and-set: a put that landed since the copy already superseded this record.
            if keydir.get(key) == old:
                keydir[key] = new
                live[_seg_of(old)] -= _len_of(old)
                seg = _seg_of(new)
                live[seg] = live.get(seg, 0) + _len_of(new)

    async def _delete_obsolete(self) -> None:
        # Low-Water Mark: only segments no key and no in-flight read references are deleted.
        ready = [
            s
            for s in self._obsolete
            if self._pins.get(s, 0) == 0
            and self._seg_live.get(s, 0) <= 0
            and self._seg_markers.get(s, 0) <= 0
        ]
        if not ready:
            return
        for seg in ready:
            self._obsolete.discard(seg)
            self._seg_bytes.pop(seg, None)
            self._seg_live.pop(seg, None)
            self._seg_records.pop(seg, None)
            self._seg_markers.pop(seg, None)
            self._seg_min_seq.pop(seg, None)
            self._pins.pop(seg, None)
        fds = [self._read_fds.pop(seg) for seg in ready if seg in self._read_fds]
        await trio.to_thread.run_sync(self._delete_sync, ready, fds)

    def _delete_sync(self, segs: list[int], fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        for seg in segs:
            (self._path / _seg_name(seg)).unlink(missing_ok=True)
            (self._path / _hint_name(seg)).unlink(missing_ok=True)
        _fsync_dir(self._path)

    # --- closing and statistics ------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed or self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + 60
            self._has_work.set()
            await self._committer_done.wait()
            async with self._compact_lock:
                await trio.to_thread.run_sync(self._close_sync)
        self._closed = True

    def _close_sync(self) -> None:
        try:
            if self._active_fd >= 0:
                if self._active_size > 0:
                    self._seal_active_sync()
                else:
                    os.close(self._active_fd)
                    self._active_fd = -1
                    (self._path / _seg_name(self._active)).unlink(missing_ok=True)
        finally:
            self._close_files_sync()

    def statistics(self) -> StorageStatistics:
        return StorageStatistics(
            engine="log",
            fsync=self._fsync.value,
            keys=len(self._keydir),
            records=sum(self._seg_records.values()),
            segments=len(self._seg_bytes),
            disk_bytes=sum(self._seg_bytes.values()),
            live_bytes=sum(self._seg_live.values()),
            puts=self._puts,
            gets=self._gets,
            deletes=self._deletes,
            delete_markers=len(self._markers),
            fsyncs=self._fsyncs,
            commit_batches=self._batches,
            max_commit_batch=self._max_batch,
            mean_commit_batch=self._batched / self._batches if self._batches else 0.0,
            pending_writes=len(self._pending.records),
            compactions=self._compactions,
            compaction_errors=self._compaction_errors,
            bytes_reclaimed=self._reclaimed,
            corrupt_records_skipped=self._corrupt,
            quarantined_records=self._quarantined,
            torn_tail_truncations=self._torn,
            hint_files_loaded=self._hints_loaded,
            recovery_seconds=self._recovery_seconds,
        )


class _CompactionWriter:
    """Copies live records of sealed segments into new segments (worker threads only)."""

    def __init__(self, engine: LogEngine, drop_below: dict[int, int]) -> None:
        self._engine = engine
        self._drop_below = drop_below
        self.outputs: dict[int, tuple[int, int]] = {}  # seg -> (size, records)
        self.min_seqs: dict[int, int] = {}
        self._seg = -1
        self._fd = -1
        self._size = 0
        self._hint = bytearray()
        self._count = 0
        self._crc = 0
        self._buf: list[bytes] = []
        self._buffered = 0
        self._size_written = 0
        self._tmp_paths: list[Path] = []

    def copy_live(self, seg: int) -> _Moves:
        eng = self._engine
        data = (eng._path / _seg_name(seg)).read_bytes()
        keydir, markers = eng._keydir, eng._markers
        drop_below = self._drop_below.get(seg, 0)
        moves = _Moves()
        seg_shift = seg << _SEG_SHIFT
        e = _entries_of(eng._path, seg, data)
        for kb, seq, off, length in zip(e.keys, e.seqs, e.offs, e.lens, strict=True):
            key = kb.decode("utf-8", "surrogateescape")
            old = (seq << _SEQ_SHIFT) | seg_shift | (off << _OFF_BITS) | length
            if length == HEADER_SIZE + len(kb):
                if markers.get(key) != old:
                    continue  # a marker superseded by a later put or marker
                if seq <= drop_below:
                    moves.keys.append(key)  # dropped: no older record of the key is left
                    moves.olds.append(old)
                    moves.news.append(0)
                    continue
            elif keydir.get(key) != old:
                continue  # superseded (a racy read is fine: installs compare-and-set)
            if self._fd < 0 or self._size >= eng._segment_bytes:
                self._seal()
                self._open()
            rec = data[off : off + length]
            self._buf.append(rec)
            self._buffered += length
            if self._buffered >= 1 << 20:
                self._flush()
            self._crc = zlib.crc32(rec, self._crc)
            self._hint += _HINT_ENTRY.pack(seq, self._size, length, len(kb))
            self._hint += kb
            self._count += 1
            self.min_seqs[self._seg] = min(seq, self.min_seqs.get(self._seg, seq))
            moves.keys.append(key)
            moves.olds.append(old)
            moves.news.append(_pack(seq, self._seg, self._size, length))
            self._size += length
        self._flush()
        return moves

    def _flush(self) -> None:
        if self._buf:
            data = b"".join(self._buf)
            _write_all(self._fd, data, self._size_written)
            self._size_written += len(data)
            self._buf, self._buffered = [], 0

    def _open(self) -> None:
        eng = self._engine
        self._seg = eng._alloc_segment_id()
        tmp = eng._path / (_seg_name(self._seg) + _TMP_SUFFIX)
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        # Readers may follow moved keys before the rename: the read fd survives it.
        eng._read_fds[self._seg] = os.open(tmp, os.O_RDONLY)
        self._tmp_paths.append(tmp)
        self._size, self._crc, self._size_written = 0, 0, 0
        self._hint, self._count = bytearray(), 0

    def _seal(self) -> None:
        if self._fd < 0:
            return
        eng = self._engine
        self._flush()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        eng._write_hint_sync(self._seg, self._size, self._crc, self._hint)
        tmp = eng._path / (_seg_name(self._seg) + _TMP_SUFFIX)
        os.replace(tmp, eng._path / _seg_name(self._seg))
        self._tmp_paths.remove(tmp)
        self.outputs[self._seg] = (self._size, self._count)
        self._hint, self._count = bytearray(), 0

    def finish(self) -> None:
        self._seal()
        _fsync_dir(self._engine._path)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for tmp in self._tmp_paths:
            tmp.unlink(missing_ok=True)


class _Moves:
    """Records a compaction copied: parallel lists (no GC-tracked object per record)."""

    __slots__ = ("keys", "news", "olds")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.olds: list[int] = []
        self.news: list[int] = []


def _entries_of(path: Path, seg: int, data: bytes) -> Entries:
    hint = path / _hint_name(seg)
    if hint.exists():
        entries = _decode_hint(hint.read_bytes(), len(data), zlib.crc32(data))
        if entries is not None:
            return entries
    return scan_segment(data).entries


@asynccontextmanager
async def open_log_engine(
    path: str | os.PathLike[str],
    *,
    fsync: FsyncPolicy | str = FsyncPolicy.BATCH,
    limits: StorageLimits = DEFAULT_LIMITS,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
    compact_below: float = DEFAULT_COMPACT_BELOW,
) -> AsyncIterator[LogEngine]:
    """Open (recovering if needed) the log engine on a data dir, run it, close it on exit.

    Args:
      path: the data dir; created if missing.
      fsync: ``always``, ``batch`` (default) or ``none``; see :class:`FsyncPolicy`.
      limits: key, value and sibling limits.
      segment_bytes: the active segment is sealed once it reaches this size.
      max_pending_writes: puts waiting for the disk at once; more wait (backpressure).
      compact_below: a sealed segment whose live share drops below this is compacted.

    Raises:
      DataDirError: if the path is a file, cannot be created or written, or another process has
        the data dir open.
      ConfigError: for a bad argument.
    """
    from gossipkv._errors import ConfigError

    try:
        policy = FsyncPolicy(fsync) if isinstance(fsync, str) else fsync
    except ValueError as exc:
        raise ConfigError(f"fsync must be one of always, batch, none; got {fsync!r}") from exc
    if segment_bytes < 1024 or segment_bytes > 2**31:
        raise ConfigError("segment_bytes must be between 1 KiB and 2 GiB")
    if max_pending_writes < 1:
        raise ConfigError("max_pending_writes must be at least 1")
    engine = LogEngine(
        Path(path),
        fsync=policy,
        limits=limits,
        segment_bytes=segment_bytes,
        max_pending_writes=max_pending_writes,
        compact_below=compact_below,
    )
    started = trio.current_time()
    await trio.to_thread.run_sync(engine._open_sync)
    engine._recovery_seconds = trio.current_time() - started
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine._committer)
            nursery.start_soon(engine._reader)
            nursery.start_soon(engine._compactor)
            try:
                yield engine
            finally:
                await engine.aclose()
                nursery.cancel_scope.cancel()
    finally:
        if not engine._closed:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(engine._close_files_sync)
            engine._closed = True
