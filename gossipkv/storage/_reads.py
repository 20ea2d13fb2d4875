"""The log engine's read side: a read descriptor per segment and one reader task that batches gets.

Pattern: *Request Batch* on the read path. A get of a small record the page cache holds is read
on the event loop with ``preadv2(RWF_NOWAIT)``, which fails at once rather than wait for the disk
(a thread hand-off costs far more than such a read). Other gets that arrive together are served by
one worker-thread call that ``pread``\\ s each record and checks its checksum, so a burst of them
costs one thread hand-off, not one each. A read in the thread pins the segments it reads (a
*Low-Water Mark*: compaction deletes no segment while a read of it is pending) in the same
event-loop step as the key-directory lookup that produced its locations, until the read is done.

The descriptors are opened by recovery, the committer (a new segment) and compaction (its outputs),
and closed when compaction deletes a segment or the engine closes; the reader thread looks up the
descriptors of the segments its batch pins (so none of them is closed meanwhile). A record that
fails its checksum comes back as :class:`Unreadable`, for the engine to quarantine.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gossipkv._errors import StorageClosed, StorageError

from ._keydir import len_of, off_of, seg_of
from ._log_format import HEADER_SIZE, Unreadable, record_at
from ._segment_files import keep_aside, storage_error

#: The largest record read on the event loop (copying and checking 64 KiB takes tens of
#: microseconds); larger ones go to the reader thread.
INLINE_READ_BYTES = 64 * 1024

#: ``preadv2``'s flag to fail with ``EAGAIN`` rather than wait for the disk (Linux 4.14+).
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def nowait_reads_work(directory: Path) -> bool:
    """Whether this kernel and the file system of ``directory`` serve ``RWF_NOWAIT`` reads
    (FUSE, NFS and some older tmpfs or overlayfs refuse the flag): writes and reads a probe
    file there."""
    if _RWF_NOWAIT is None:
        return False
    probe = directory / ".nowait-probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"probe")
        try:
            os.preadv(fd, [bytearray(5)], 0, _RWF_NOWAIT)
        except BlockingIOError:
            return True  # accepted, just not cached
        except OSError:
            return False
        return True
    finally:
        os.close(fd)
        probe.unlink()


def _record(raw: bytes, seg: int, off: int, length: int) -> bytes | Unreadable:
    """The value of the record read at ``off`` of ``seg``, or :class:`Unreadable`."""
    rec = record_at(raw, 0) if len(raw) == length else None
    if rec is None:
        return Unreadable(f"record at segment {seg} offset {off} failed its checksum")
    return raw[HEADER_SIZE + len(rec[0]) :]


@dataclass
class _Batch:
    """Gets waiting for one batched read."""

    locs: list[int] = field(default_factory=list)
    results: list[bytes | Unreadable | BaseException] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)


class SegmentReads:
    """Read descriptors per segment, and the reader task that serves gets in batches."""

    def __init__(self, path: Path, pins: dict[int, int], on_unpinned: Callable[[], None]) -> None:
        self._path = path
        #: The engine's pins per segment (its :class:`LogIndex`'s, never replaced).
        self._pins = pins
        #: Called on the loop after a read lets go of its segments (compaction may now delete
        #: what it was waiting for).
        self._on_unpinned = on_unpinned
        #: A read descriptor per segment on disk.
        self.fds: dict[int, int] = {}
        self._batch = _Batch()
        self._has_reads = trio.Event()
        #: The ``RWF_NOWAIT`` flag while records may be read on the event loop; ``None`` for good
        #: once the kernel or the file system refuses it.
        self._nowait_flag = _RWF_NOWAIT
        #: Records read on the event loop (see :meth:`read_cached`).
        self.inline_reads = 0

    def take(self, segs: list[int]) -> list[int]:
        """Forget the descriptors of ``segs`` (about to be deleted); returns them to close."""
        return [self.fds.pop(seg) for seg in segs if seg in self.fds]

    async def read_many(self, locs: list[int]) -> list[bytes | Unreadable]:
        """The record bytes (the value) at each location, or :class:`Unreadable`.

        Raises:
          StorageError: an I/O error. StorageClosed: the engine closed during the read.
        """
        # Pin the segments now, in the same step as the key-directory lookup that produced the
        # locations, so compaction cannot delete them before the read runs (Low-Water Mark).
        segs = {seg_of(loc) for loc in locs}
        pins = self._pins
        for seg in segs:
            pins[seg] = pins.get(seg, 0) + 1
        try:
            batch = self._batch
            first = len(batch.locs)
            batch.locs.extend(locs)
            self._has_reads.set()
            await batch.done.wait()
        finally:
            for seg in segs:
                pins[seg] -= 1
            self._on_unpinned()
        got = batch.results[first : first + len(locs)]
        if len(got) != len(locs):
            raise StorageClosed(f"the storage engine on {self._path} closed during a read")
        out: list[bytes | Unreadable] = []
        for item in got:
            if isinstance(item, BaseException):
                raise item
            out.append(item)
        return out

    async def run(self) -> None:
        """The reader task: one worker-thread call per batch of gets."""
        while True:
            await self._has_reads.wait()
            self._has_reads = trio.Event()
            batch, self._batch = self._batch, _Batch()
            if not batch.locs:
                batch.done.set()
                continue
            try:
                batch.results = await trio.to_thread.run_sync(self._read_sync, batch.locs)
            except Exception as exc:
                batch.results = [StorageError(f"read failed: {exc!r}")] * len(batch.locs)
            finally:
                batch.done.set()

    def read_cached(self, loc: int) -> bytes | Unreadable | None:
        """The record at ``loc`` when the page cache holds it and it is small
        (:data:`INLINE_READ_BYTES`), read here on the event loop; ``None`` otherwise (the
        reader thread reads it, and reports any I/O error). ``RWF_NOWAIT`` fails rather than
        wait for the disk, and the descriptors are opened ``O_NOATIME`` (see
        :func:`open_for_reads`), so the read does not wait to update the access time either."""
        seg, off, length = seg_of(loc), off_of(loc), len_of(loc)
        fd, flag = self.fds.get(seg), self._nowait_flag
        if flag is None or length > INLINE_READ_BYTES or fd is None:
            return None
        buf = bytearray(length)
        try:
            got = os.preadv(fd, [buf], off, flag)
        except BlockingIOError:
            return None  # not in the page cache
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._nowait_flag = None  # this file system or kernel refuses the flag
            return None
        if got != length:
            return None  # partly cached, or short: the thread reads it whole
        self.inline_reads += 1
        return _record(bytes(buf), seg, off, length)

    def _read_sync(self, locs: list[int]) -> list[bytes | Unreadable | BaseException]:
        out: list[bytes | Unreadable | BaseException] = []
        for loc in locs:
            seg, off, length = seg_of(loc), off_of(loc), len_of(loc)
            fd = self.fds.get(seg)
            if fd is None:
                out.append(StorageError(f"segment {seg} is gone (engine closing?)"))
                continue
            try:
                raw = os.pread(fd, length, off)
            except OSError as exc:
                out.append(storage_error(exc, f"read of segment {seg}"))
                continue
            out.append(_record(raw, seg, off, length))
        return out

    async def copy_aside(self, loc: int) -> str:
        """Copy the record at ``loc`` into ``quarantine/``; returns where (or why not)."""
        seg = seg_of(loc)
        self._pins[seg] = self._pins.get(seg, 0) + 1  # the copy reads the segment
        try:
            return await trio.to_thread.run_sync(self._copy_aside_sync, loc)
        except OSError as exc:
            return f"(not kept: {exc.strerror or exc})"
        finally:
            self._pins[seg] -= 1

    def _copy_aside_sync(self, loc: int) -> str:
        seg, off, length = seg_of(loc), off_of(loc), len_of(loc)
        fd = self.fds.get(seg)
        if fd is None:
            raise OSError(errno.ENOENT, f"segment {seg} is gone")
        return keep_aside(self._path, f"{seg:08d}-{off:010d}.rec", os.pread(fd, length, off))

    def close_sync(self) -> None:
        """Close every descriptor (worker thread, or the loop once nothing runs)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
