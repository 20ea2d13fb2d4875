"""Compaction of sealed segments: planned on the event loop, copied in a worker thread, and
applied on the loop by :class:`Compactor`, which also runs the background compactions and deletes
the segments nothing references any more.

For each victim segment the loop takes a snapshot of what is still live in it (the records that
are still the newest of their key, the delete markers that must stay) and lays the copies out in
output segments, allocating their ids. A worker thread then copies exactly those records from the
segment file into the outputs; it reads only the segment files and the plan it was handed, and
touches no engine state. The outputs stay ``.tmp`` files until all of them are written, fsynced
and hinted, then are renamed together. Only then does the compactor apply the :class:`Compacted`
result through :meth:`LogIndex.apply_moves`, compare-and-set per key, so a put or delete that
raced the compaction wins, and a failure (or crash) at any point before leaves the key directory
as it was and no output behind (recovery removes ``.tmp`` files).
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from gossipkv._errors import StorageError

from ._keydir import OFF_BITS, SEG_SHIFT, SEQ_SHIFT, LogIndex, Moves
from ._log_format import (
    HEADER_SIZE,
    HINT_ENTRY,
    HINT_ENTRY_SIZE,
    TMP_SUFFIX,
    Entries,
    hint_name,
    seg_name,
)
from ._reads import SegmentReads
from ._segment_files import (
    SegmentWindow,
    delete_segments,
    fsync_dir,
    open_for_reads,
    read_index,
    storage_error,
    write_all,
    write_hint,
)

# Records planned between checkpoints: each is a few dict lookups, so 2048 held the loop for
# 10-17 ms on this machine; 256 keeps a step near 1 ms.
_CHECKPOINT_EVERY = 256
# Compaction's moves applied between checkpoints (2048 held the loop for 6 ms).
_APPLY_EVERY = 512
_FLUSH_BYTES = 1 << 20
# Give up cleaning after a failure rather than hang a closing engine; recovery removes leftovers.
_ABORT_SECONDS = 30


class Compactor:
    """The engine's compactions: the background task that compacts sealed segments once they
    are mostly garbage, a full compaction on demand, applying each result on the event loop
    and deleting the segments nothing references any more.

    Args:
      path: the data dir.
      index: the engine's key directory and per-segment accounting.
      reads: the engine's reads (their descriptors and pins).
      active: the segment being written (never compacted).
      segment_bytes, alloc_segment_id: the size and ids of the segments compaction writes.
      compact_below: the live share under which the background task compacts a segment.
    """

    def __init__(
        self,
        path: Path,
        index: LogIndex,
        reads: SegmentReads,
        *,
        active: Callable[[], int],
        segment_bytes: int,
        alloc_segment_id: Callable[[], int],
        compact_below: float,
    ) -> None:
        self._path = path
        self._index = index
        self._reads = reads
        self._active = active
        self._segment_bytes = segment_bytes
        self._alloc_segment_id = alloc_segment_id
        self._compact_below = compact_below
        #: Held by a compaction, and by the engine while it closes its files.
        self.lock = trio.Lock()
        #: Set when a segment was sealed or became deletable: :meth:`run` looks again.
        self.wanted = trio.Event()
        self.compactions = 0
        self.errors = 0
        self.reclaimed = 0

    def wake_if_obsolete(self) -> None:
        if self._index.obsolete:
            self.wanted.set()  # delete what is now unreferenced

    async def compact_all(self) -> None:
        """Compact every sealed segment holding superseded records (and then the markers)."""
        await self._compact(lambda seg, live, total: live < total)
        if self._index.markers:
            # The first pass keeps a marker while another victim still holds an older record
            # of its key; those victims are gone now, so the markers can go too.
            seg_markers = self._index.seg_markers
            await self._compact(lambda seg, live, total: seg_markers.get(seg, 0) > 0)

    async def run(self) -> None:
        """The background compactor (in the engine's nursery)."""
        while True:
            await self.wanted.wait()
            self.wanted = trio.Event()
            try:
                if self._index.obsolete:
                    await self._delete_obsolete()
                await self._compact(self._mostly_garbage)
            except (StorageError, OSError):
                # Background compaction failing (say, a full disk) must not take the engine
                # down: nothing was lost, the space is just not reclaimed yet. Retry on the
                # next roll.
                self.errors += 1

    def _mostly_garbage(self, seg: int, live: int, total: int) -> bool:
        return live < total * self._compact_below

    async def _compact(self, wanted: Callable[[int, int, int], bool]) -> None:
        async with self.lock:
            victims = self._index.victims(wanted, self._active())
            if not victims:
                return
            try:
                done = await compact_segments(
                    self._path, victims, self._index, self._segment_bytes, self._alloc_segment_id
                )
            except OSError as exc:
                raise storage_error(exc, "compaction") from exc
            await self._apply(done)

    async def _apply(self, done: Compacted) -> None:
        """Apply a compaction's result on the event loop (compare-and-set per key)."""
        index = self._index
        self._reads.fds.update(done.read_fds)
        index.add_outputs(done.outputs)
        moves = done.moves
        for start in range(0, len(moves), _APPLY_EVERY):
            await trio.lowlevel.checkpoint()
            index.apply_moves(moves, start, start + _APPLY_EVERY)
        before = sum(index.seg_bytes[s] for s in done.victims)
        after = sum(size for size, _, _ in done.outputs.values())
        self.reclaimed += max(0, before - after)
        self.compactions += 1
        index.obsolete.update(done.victims)
        await self._delete_obsolete()

    async def _delete_obsolete(self) -> None:
        # Low-Water Mark: only segments no key and no in-flight read references are deleted.
        ready = self._index.take_deletable()
        if not ready:
            return
        fds = self._reads.take(ready)
        try:
            await trio.to_thread.run_sync(self._delete_sync, ready, fds)
        except OSError as exc:
            # Still obsolete: the next compaction (or the next open, from the obsolete list)
            # deletes them. Forgetting them here would leave old records on disk untracked.
            self._index.obsolete.update(ready)
            raise storage_error(exc, "deleting compacted segments") from exc

    def _delete_sync(self, segs: list[int], fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        delete_segments(self._path, segs)


@dataclass
class Compacted:
    """What a compaction did, for the engine to apply on the event loop."""

    victims: list[int]
    #: Where each copied record now lies (``new``), or 0 for a dropped delete marker.
    moves: Moves
    #: The new segments: ``seg -> (size, records, lowest seq)``.
    outputs: dict[int, tuple[int, int, int]]
    #: A read descriptor per new segment; the engine takes them over.
    read_fds: dict[int, int]


async def compact_segments(
    path: Path,
    victims: list[int],
    index: LogIndex,
    segment_bytes: int,
    alloc_segment_id: Callable[[], int],
) -> Compacted:
    """Copy the live records of ``victims`` into new segments; returns the result, unapplied.

    Raises:
      OSError: if a file operation failed; no output is left behind.
    """
    drop_below = {seg: index.droppable_below(seg) for seg in victims}
    plan = _Plan(segment_bytes, alloc_segment_id)
    copier = _Copier(path)
    try:
        for seg in victims:
            # Only the segment's index is held (its hint's bytes); the copier streams the
            # records it needs from the file.
            entries = await trio.to_thread.run_sync(read_index, path, seg)
            first = len(plan.moves)
            await plan.take(seg, entries, index, drop_below[seg])
            del entries
            await trio.to_thread.run_sync(copier.copy, seg, plan.moves, first)
        read_fds = await trio.to_thread.run_sync(copier.finish)
    except BaseException:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _ABORT_SECONDS
            await trio.to_thread.run_sync(copier.abort)
        raise
    outputs = {seg: (size, records, low) for seg, (size, records, low) in plan.outputs.items()}
    return Compacted(victims, plan.moves, outputs, read_fds)


class _Plan:
    """The event-loop side: what to copy and where it goes."""

    def __init__(self, segment_bytes: int, alloc_segment_id: Callable[[], int]) -> None:
        self._segment_bytes = segment_bytes
        self._alloc = alloc_segment_id
        self.moves = Moves()
        self.outputs: dict[int, list[int]] = {}  # seg -> [size, records, lowest seq]
        self._seg = -1
        self._size = 0

    async def take(self, seg: int, entries: Entries, index: LogIndex, drop_below: int) -> None:
        """Add the records of ``seg`` to copy, with their new places, and the delete markers
        to drop, to the moves."""
        keydir, markers = index.keydir, index.markers
        add = self.moves.add
        seg_shift = seg << SEG_SHIFT
        body, unpack = entries.body, HINT_ENTRY.unpack_from
        for n, pos in enumerate(entries.starts):
            if n % _CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
            seq, off, length, klen = unpack(body, pos)
            kb = body[pos + HINT_ENTRY_SIZE : pos + HINT_ENTRY_SIZE + klen]
            key = str(kb, "utf-8", "surrogateescape")
            old = (seq << SEQ_SHIFT) | seg_shift | (off << OFF_BITS) | length
            if length == HEADER_SIZE + klen:
                if markers.get(key) != old:
                    continue  # a marker superseded by a later put or marker
                if seq <= drop_below:
                    add(kb, seq, seg, off, length, 0, 0)  # dropped: no older record is left
                    continue
            elif keydir.get(key) != old:
                continue  # superseded
            if self._seg < 0 or self._size >= self._segment_bytes:
                self._seg, self._size = self._alloc(), 0
                self.outputs[self._seg] = [0, 0, seq]
            add(kb, seq, seg, off, length, self._seg, self._size)
            self._size += length
            out = self.outputs[self._seg]
            out[0] += length
            out[1] += 1
            out[2] = min(out[2], seq)


class _Copier:
    """The worker-thread side: writes the planned copies (one thread call at a time)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seg = -1
        self._fd = -1
        self._size = 0
        self._crc = 0
        self._hint = bytearray()
        self._buf: list[bytes | memoryview] = []
        self._buffered = 0
        self._size_written = 0
        self._outputs: list[int] = []  # every output created, in order
        self._renamed: list[int] = []
        self._read_fds: dict[int, int] = {}

    def _tmp(self, seg: int) -> Path:
        return self._path / (seg_name(seg) + TMP_SUFFIX)

    def copy(self, victim: int, moves: Moves, first: int) -> None:
        """Copy the records ``moves[first:]`` planned from segment ``victim``."""
        src = os.open(self._path / seg_name(victim), os.O_RDONLY)
        try:
            window = SegmentWindow(src)
            keys, ends = memoryview(moves.keys), moves.key_ends
            seqs, offs, lens = moves.seqs, moves.old_offs, moves.lens
            new_segs, new_offs = moves.new_segs, moves.new_offs
            pack_entry = HINT_ENTRY.pack
            for i in range(first, len(moves)):
                seg = new_segs[i]
                if not seg:
                    continue  # a dropped delete marker
                if seg != self._seg:
                    self._seal()
                    self._open(seg)
                length = lens[i]
                if new_offs[i] != self._size:
                    raise AssertionError("compaction's copy strayed from its plan")
                rec = window.read(offs[i], length)
                self._buf.append(rec)
                self._buffered += length
                if self._buffered >= _FLUSH_BYTES:
                    self._flush()
                self._crc = zlib.crc32(rec, self._crc)
                kb = keys[ends[i - 1] if i else 0 : ends[i]]
                self._hint += pack_entry(seqs[i], self._size, length, len(kb))
                self._hint += kb
                self._size += length
            self._flush()
        finally:
            os.close(src)

    def _flush(self) -> None:
        if self._buf:
            data = b"".join(self._buf)
            write_all(self._fd, data, self._size_written)
            self._size_written += len(data)
            self._buf, self._buffered = [], 0

    def _open(self, seg: int) -> None:
        tmp = self._tmp(seg)
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._seg = seg
        self._outputs.append(seg)
        # The read descriptor survives the rename; the engine reads moved keys through it.
        self._read_fds[seg] = open_for_reads(tmp)
        self._size, self._crc, self._size_written = 0, 0, 0
        self._hint = bytearray()

    def _seal(self) -> None:
        if self._fd < 0:
            return
        self._flush()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        write_hint(self._path, self._seg, self._size, self._crc, self._hint)
        self._hint = bytearray()

    def finish(self) -> dict[int, int]:
        """Seal the last output, rename every output into place; returns the read descriptors."""
        self._seal()
        for seg in self._outputs:
            os.replace(self._tmp(seg), self._path / seg_name(seg))
            self._renamed.append(seg)
        fsync_dir(self._path)
        read_fds, self._read_fds = self._read_fds, {}
        return read_fds

    def abort(self) -> None:
        """Close and remove every output (best effort: recovery removes ``.tmp`` leftovers)."""
        fds = [self._fd, *self._read_fds.values()] if self._fd >= 0 else [*self._read_fds.values()]
        self._fd, self._read_fds = -1, {}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for seg in self._outputs:
            paths = [self._tmp(seg), self._path / hint_name(seg)]
            if seg in self._renamed:
                paths.append(self._path / seg_name(seg))
            for p in paths:
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            fsync_dir(self._path)
