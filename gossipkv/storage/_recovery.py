"""Opening a log engine's data dir: take its lock, recover the key directory, start a segment.

Runs in one worker thread before the engine's tasks start and touches no engine: it returns a
:class:`Recovered` value that the engine adopts on the event loop. Recovery truncates a torn
tail (a write cut short by a crash: nothing after it was acknowledged), skips and keeps aside
damaged records inside a segment, prefers a segment's hint file when it matches the segment, and
keeps the newest record of each key by ``seq`` wherever it lies (original or compacted segment).
"""

from __future__ import annotations

import errno
import fcntl
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from gossipkv._errors import DataDirError
from gossipkv._merkle import RecordHashes, record_hash

from ._keydir import OFF_BITS, SEG_SHIFT, SEQ_SHIFT, SHARD_MASK, KeyDir, len_of, seg_of
from ._log_format import (
    HEADER_SIZE,
    HINT_ENTRY,
    HINT_ENTRY_SIZE,
    SEG_SUFFIX,
    TMP_SUFFIX,
    Entries,
    ScanResult,
    decode_hint,
    hint_name,
    scan_segment,
    seg_name,
)
from ._segment_files import (
    WINDOW,
    finish_deletions,
    fsync_dir,
    keep_aside,
    open_for_reads,
    segment_crc,
    write_hint,
)


@dataclass
class Recovered:
    """What recovery found on disk, and the open files the engine takes over."""

    lock_fd: int
    keydir: KeyDir
    record_hashes: RecordHashes
    seg_bytes: dict[int, int]
    seg_records: dict[int, int]
    seg_live: dict[int, int]
    seg_markers: dict[int, int]
    seg_min_seq: dict[int, int]
    #: Delete markers still on disk: key -> location (the key is not in the key directory).
    markers: dict[str, int]
    max_seq: int
    corrupt: int
    torn: int
    hints_loaded: int
    damaged_keys: list[str]
    #: A read descriptor per segment, the new (empty) active one included.
    read_fds: dict[int, int] = field(default_factory=dict)
    active: int = 0
    active_fd: int = -1


def open_data_dir(path: Path) -> Recovered:
    """Lock ``path`` (creating it), recover it and start a new active segment (worker thread).

    Raises:
      DataDirError: the path is a file, cannot be created or written, or another process has it.
    """
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
    rec: Recovered | None = None
    try:
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        rec, max_seg = _recover(path, lock_fd)
        for seg in rec.seg_bytes:
            rec.read_fds[seg] = open_for_reads(path / seg_name(seg))
        rec.active = max_seg + 1
        rec.active_fd, rec.read_fds[rec.active] = start_segment(path, rec.active)
        return rec
    except BaseException as exc:
        for fd in rec.read_fds.values() if rec is not None else ():
            os.close(fd)
        os.close(lock_fd)  # closing the descriptor releases the flock
        if isinstance(exc, OSError):
            raise DataDirError(f"cannot use data dir {path}: {exc.strerror or exc}") from exc
        raise


def start_segment(path: Path, seg: int) -> tuple[int, int]:
    """Create segment ``seg`` (its name made durable); returns its write and read descriptors."""
    seg_path = path / seg_name(seg)
    fd = os.open(seg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        read_fd = open_for_reads(seg_path)
        try:
            fsync_dir(path)  # the new file's name must survive a crash too
        except BaseException:
            os.close(read_fd)
            raise
    except BaseException:
        os.close(fd)
        raise
    return fd, read_fd


def _recover(path: Path, lock_fd: int) -> tuple[Recovered, int]:
    for leftover in path.glob(f"*{TMP_SUFFIX}"):
        leftover.unlink()  # an unfinished compaction output; its inputs are still there
    finish_deletions(path)  # segments a compaction replaced, listed but not all deleted
    segs = sorted(int(p.name[: -len(SEG_SUFFIX)]) for p in path.glob(f"*{SEG_SUFFIX}"))
    keydir = KeyDir()
    shards = keydir.shards
    record_hashes = RecordHashes()
    seg_bytes: dict[int, int] = {}
    seg_records: dict[int, int] = {}
    seg_min_seq: dict[int, int] = {}
    marker_locs: dict[str, int] = {}
    corrupt = torn = hints = 0
    damaged_keys: list[str] = []
    max_seq = 0
    for seg in segs:
        seg_path = path / seg_name(seg)
        hint_path = path / hint_name(seg)
        fd = os.open(seg_path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            entries: Entries | None = None
            if hint_path.exists():
                # The segment is streamed for its checksum, never held whole.
                raw = hint_path.read_bytes()
                entries = decode_hint(raw, size, segment_crc(fd, size))
                if entries is not None:
                    hints += 1
            if entries is None:
                scanned, size, cut = _scan(path, seg, os.pread(fd, size, 0))
                entries = scanned.entries
                corrupt += scanned.corrupt
                torn += cut
                damaged_keys.extend(
                    kb.decode("utf-8") for _, _, kb in scanned.damaged if kb is not None
                )
                del scanned
            if not entries and not size:
                seg_path.unlink()
                hint_path.unlink(missing_ok=True)
                continue
            seg_bytes[seg] = size
            seg_records[seg] = len(entries)
            max_seq, low = _index_segment(
                seg, fd, entries, shards, marker_locs, record_hashes, max_seq
            )
            if entries:
                seg_min_seq[seg] = low
        finally:
            os.close(fd)
    # A key whose newest record is a delete marker is not stored: keep only the marker.
    markers: dict[str, int] = {}
    for key, loc in marker_locs.items():
        shard = shards[hash(key) & SHARD_MASK]
        if shard.get(key) == loc:
            del shard[key]
            record_hashes.discard(key)
            markers[key] = loc
    seg_live: dict[int, int] = dict.fromkeys(seg_bytes, 0)
    for loc in keydir.locations():
        seg_live[seg_of(loc)] += len_of(loc)
    seg_markers: dict[int, int] = {}
    for loc in markers.values():
        seg = seg_of(loc)
        seg_markers[seg] = seg_markers.get(seg, 0) + len_of(loc)
    recovered = Recovered(
        lock_fd=lock_fd,
        keydir=keydir,
        record_hashes=record_hashes,
        seg_bytes=seg_bytes,
        seg_records=seg_records,
        seg_live=seg_live,
        seg_markers=seg_markers,
        seg_min_seq=seg_min_seq,
        markers=markers,
        max_seq=max_seq,
        corrupt=corrupt,
        torn=torn,
        hints_loaded=hints,
        damaged_keys=damaged_keys,
    )
    return recovered, max(segs, default=0)


def _scan(path: Path, seg: int, data: bytes) -> tuple[ScanResult, int, int]:
    """Scan a segment with no usable hint: keep its damaged records aside, truncate a torn tail
    and write its hint. Returns the scan, the segment's size now, and 1 if its tail was torn."""
    scanned = scan_segment(data)
    for start, end, _ in scanned.damaged:
        # Damage inside the segment (not a torn tail): keep the bytes for inspection, and
        # have the key repaired from the other replicas.
        keep_aside(path, f"{seg:08d}-{start:010d}.rec", data[start:end])
    torn = 0
    if scanned.valid_end < len(data):
        # A torn tail: the crash cut a write short (nothing after it was acknowledged).
        torn = 1
        with open(path / seg_name(seg), "r+b") as f:
            f.truncate(scanned.valid_end)
            f.flush()
            os.fsync(f.fileno())
        data = data[: scanned.valid_end]
    write_hint(path, seg, len(data), zlib.crc32(data), scanned.entries.hint_body())
    return scanned, len(data), torn


def _index_segment(
    seg: int,
    fd: int,
    entries: Entries,
    shards: list[dict[str, int]],
    marker_locs: dict[str, int],
    record_hashes: RecordHashes,
    max_seq: int,
) -> tuple[int, int]:
    """Enter one segment's records into the key directory where they are the newest of their
    key; returns the highest ``seq`` seen so far and the segment's lowest.

    The record hashes are rebuilt from the records themselves (never trusted from a hint file),
    read through a window of the segment file (:class:`SegmentWindow`'s, inlined: a call per
    record made recovery ~15% slower).
    """
    seg_shift = seg << SEG_SHIFT
    body, unpack = entries.body, HINT_ENTRY.unpack_from
    low = 1 << 64
    buf, lo, hi = b"", 0, 0
    for pos in entries.starts:
        seq, off, length, klen = unpack(body, pos)
        kb = body[pos + HINT_ENTRY_SIZE : pos + HINT_ENTRY_SIZE + klen]
        loc = (seq << SEQ_SHIFT) | seg_shift | (off << OFF_BITS) | length
        key = str(kb, "utf-8", "surrogateescape")
        shard = shards[hash(key) & SHARD_MASK]
        if loc > shard.get(key, 0):
            shard[key] = loc
            end = off + length
            if off < lo or end > hi:
                buf, lo = os.pread(fd, max(length, WINDOW), off), off
                hi = off + len(buf)
                if end > hi:
                    raise OSError(errno.EIO, f"a record at {off} runs past the segment's end")
            value = buf[off - lo + HEADER_SIZE + klen : end - lo]
            record_hashes.set(key, record_hash(kb, value), kb)
        if length == HEADER_SIZE + klen:  # a delete marker (an empty value)
            marker_locs[key] = max(loc, marker_locs.get(key, 0))
        if seq > max_seq:
            max_seq = seq
        if seq < low:
            low = seq
    return max_seq, low
