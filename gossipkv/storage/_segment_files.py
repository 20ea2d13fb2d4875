"""Blocking file operations on the log engine's data dir (worker threads only, never trio).

Shared by the committer, recovery, compaction and quarantine: whole writes, directory fsyncs,
hint files written atomically, records kept aside, and ``OSError`` translated once into the
storage errors callers see.
"""

from __future__ import annotations

import errno
import os
import zlib
from pathlib import Path

from gossipkv._errors import StorageError, StorageFull

from ._log_format import (
    QUARANTINE_DIR,
    TMP_SUFFIX,
    Entries,
    decode_hint,
    hint_frame,
    hint_name,
    scan_segment,
    seg_name,
)

# Worker-thread loops here (hint decoding, segment scans, compaction's copy, recovery) do not give
# the GIL away themselves: the interpreter's switch interval takes it from them (1 ms in a serving
# peer and in ``bench storage``). An explicit ``os.sched_yield()`` every few hundred records made
# things worse: with the event loop waiting on the other core, this thread took the GIL back
# before the loop's thread woke, and each re-take counted as a switch, so no forced switch came.
# One 190k-entry hint decode held the loop 51-53 ms; ``bench storage --keys 200000``'s worst
# stall was 104-176 ms with it and 2.7-6.5 ms without (2-core machine, 2026-11-29).

_O_NOATIME: int = getattr(os, "O_NOATIME", 0)


def open_for_reads(path: Path) -> int:
    """A read descriptor for a segment the engine serves gets from. ``O_NOATIME`` where the
    process may use it (it owns the file): a read on the event loop (``RWF_NOWAIT``) must not
    update the access time, which can wait for the file system's journal."""
    try:
        return os.open(path, os.O_RDONLY | _O_NOATIME)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return StorageFull(f"{what}: the data dir's file system is full ({exc.strerror})")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"{what}: the data dir is read-only ({exc.strerror})")
    return StorageError(f"{what}: {exc.strerror or exc}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_hint(
    path: Path, seg: int, size: int, crc: int, entries_body: bytes | bytearray | memoryview
) -> None:
    """Write segment ``seg``'s hint file (fsynced, then renamed into place)."""
    final = path / hint_name(seg)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    head, trailer = hint_frame(size, crc, entries_body)
    with open(tmp, "wb") as f:
        f.write(head)
        f.write(entries_body)
        f.write(trailer)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


#: How much of a segment file is read at once: a segment is streamed, never held whole.
WINDOW = 1 << 20


def segment_crc(fd: int, size: int) -> int:
    """The crc32 of the first ``size`` bytes of a segment file, read a window at a time."""
    crc = off = 0
    while off < size:
        chunk = os.pread(fd, min(WINDOW, size - off), off)
        if not chunk:
            raise OSError(errno.EIO, f"segment file ended at {off} of {size} bytes")
        crc = zlib.crc32(chunk, crc)
        off += len(chunk)
    return crc


class SegmentWindow:
    """Reads records of one segment file in increasing offset order through a window of about
    :data:`WINDOW` bytes (a 64 MiB segment held whole, with its index, was most of the peak
    memory of a compaction)."""

    __slots__ = ("_buf", "_fd", "_hi", "_lo")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = memoryview(b"")
        self._lo = self._hi = 0

    def read(self, off: int, length: int) -> memoryview:
        """The ``length`` bytes at ``off`` (a view, valid after the window moves on)."""
        end = off + length
        if off < self._lo or end > self._hi:
            raw = os.pread(self._fd, max(length, WINDOW), off)
            if len(raw) < length:
                raise OSError(errno.EIO, f"a record at {off} runs past the segment's end")
            self._buf = memoryview(raw)
            self._lo, self._hi = off, off + len(raw)
        return self._buf[off - self._lo : end - self._lo]


def read_index(path: Path, seg: int) -> Entries:
    """A sealed segment's record index: its hint when that is intact and matches the segment
    (the segment's checksum is streamed, not read whole), else a scan of the segment."""
    fd = os.open(path / seg_name(seg), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        try:
            raw = (path / hint_name(seg)).read_bytes()
        except FileNotFoundError:
            raw = b""
        entries = decode_hint(raw, size, segment_crc(fd, size)) if raw else None
        if entries is not None:
            return entries
        return scan_segment(os.pread(fd, size, 0)).entries
    finally:
        os.close(fd)


def keep_aside(path: Path, name: str, raw: bytes) -> str:
    """Copy an unreadable record into ``quarantine/`` (fsynced); returns where."""
    where = path / QUARANTINE_DIR
    where.mkdir(exist_ok=True)
    target = where / name
    tmp = target.with_suffix(TMP_SUFFIX)
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(out, raw, 0)
        os.fsync(out)
    finally:
        os.close(out)
    os.replace(tmp, target)
    fsync_dir(where)
    return str(target)


def link_snapshot(path: Path, dest: Path, segs: list[int]) -> tuple[int, int]:
    """Hard-link the sealed segments ``segs`` and their hint files from ``path`` into a new
    directory ``dest``; returns ``(files, bytes)``. Sealed segments never change, so the links
    are a consistent copy that costs no space until compaction deletes the originals (as
    ``nodetool snapshot`` does with SSTables). A failure removes what was linked.

    Raises:
      OSError: ``dest`` exists, or it is on another file system (hard links cannot cross one).
    """
    dest.mkdir(parents=True, exist_ok=False)
    files = size = 0
    try:
        for seg in segs:
            for name in (seg_name(seg), hint_name(seg)):
                source = path / name
                try:
                    os.link(source, dest / name)
                except FileNotFoundError:
                    if name == hint_name(seg):
                        continue  # no hint yet: recovery scans the segment instead
                    raise
                files += 1
                size += (dest / name).stat().st_size
        fsync_dir(dest)
        fsync_dir(dest.parent)
    except BaseException:
        for entry in dest.iterdir():
            entry.unlink(missing_ok=True)
        dest.rmdir()
        raise
    return files, size


#: The segments a compaction made obsolete, listed before their files are deleted: recovery
#: finishes the deletion, so a failure or crash part way through never leaves an old segment
#: on disk untracked (its records, whose delete markers compaction dropped, would come back).
OBSOLETE_LIST = "obsolete"


def read_obsolete(path: Path) -> list[int]:
    """The segments listed obsolete by a deletion that did not finish (``[]`` when none).

    Raises:
      OSError: the list is unreadable or malformed (it is written atomically, so never torn):
        opening refuses rather than guess which segments to delete.
    """
    try:
        text = (path / OBSOLETE_LIST).read_text("ascii")
    except FileNotFoundError:
        return []
    try:
        return [int(line) for line in text.split()]
    except ValueError:
        raise OSError(errno.EINVAL, f"malformed list of obsolete segments in {path}") from None


def delete_segments(path: Path, segs: list[int]) -> None:
    """Delete obsolete segments and their hint files, crash-safely: their ids (with any an
    earlier attempt left) go to the obsolete list first (fsynced, renamed into place), the
    files go, and the list goes last. What a failure leaves, recovery deletes.

    Raises:
      OSError: a step failed; the list names every segment not known deleted.
    """
    todo = sorted(set(segs) | set(read_obsolete(path)))
    final = path / OBSOLETE_LIST
    tmp = final.with_name(OBSOLETE_LIST + TMP_SUFFIX)
    with open(tmp, "w", encoding="ascii") as f:
        f.write("".join(f"{seg}\n" for seg in todo))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(path)
    for seg in todo:
        (path / seg_name(seg)).unlink(missing_ok=True)
        (path / hint_name(seg)).unlink(missing_ok=True)
    fsync_dir(path)
    final.unlink()
    fsync_dir(path)


def finish_deletions(path: Path) -> int:
    """At open: delete what an unfinished deletion listed; returns how many segments."""
    listed = read_obsolete(path)
    if listed:
        delete_segments(path, [])
    else:
        (path / OBSOLETE_LIST).unlink(missing_ok=True)
    return len(listed)
