"""Group commit for the log engine: many puts, one write and one fsync, acknowledged after it.

:class:`GroupCommit` owns the active segment and the batch being filled. Writers append a record
to the pending batch and wait; the committer task takes the whole batch, reserves its place at the
end of the active segment and writes it in a worker thread (Request Batch). Up to two batches are
on their way to the disk at once (Request Pipeline): the bytes reach the file strictly in offset
order, only the fsyncs overlap, and batches are installed into the :class:`LogIndex` and
acknowledged strictly in offset order. A failed write cuts the segment back to where it failed
(nothing after it was acknowledged). The active segment is sealed and the next one started once it
reaches ``segment_bytes``; segment ids are allocated on the event loop. Writers apply
backpressure: at most ``max_pending_writes`` wait for the committer at once.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gossipkv._errors import StorageClosed, StorageError
from gossipkv._merkle import record_hash

from ._base import FsyncPolicy
from ._keydir import LogIndex, off_of, pack
from ._log_format import HINT_ENTRY, encode_record, seg_name
from ._recovery import start_segment
from ._segment_files import storage_error, write_all, write_hint

_MAX_COMMITS_IN_FLIGHT = 2


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


class GroupCommit:
    """The write side of the log: the active segment, the pending batch and the committer."""

    def __init__(
        self,
        path: Path,
        *,
        fsync: FsyncPolicy,
        segment_bytes: int,
        max_pending_writes: int,
        index: LogIndex,
        alloc_segment_id: Callable[[], int],
        on_new_segment: Callable[[int, int], None],
    ) -> None:
        self._path = path
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._index = index
        self._alloc_segment_id = alloc_segment_id
        #: Called on the loop with a new segment's id and read descriptor once it exists (the
        #: one before it is sealed then).
        self._on_new_segment = on_new_segment
        self._seq = 1
        self.active = 0
        self._active_fd = -1
        self._active_size = 0
        self._active_crc = 0
        self._active_hint = bytearray()  # hint entries of the active segment, pre-encoded
        self._pending = _Batch()
        self._has_work = trio.Event()
        self._max_pending = max_pending_writes
        self._in_flight = 0
        self._space = trio.lowlevel.ParkingLot()
        self.closing = False
        #: Set once a failed write could not be repaired: no further write is accepted.
        self.failed: StorageError | None = None
        self.done = trio.Event()
        self._commits_in_flight = 0
        self._commit_lot = trio.lowlevel.ParkingLot()
        self._broken_at: int | None = None
        self._broken_error: StorageError | None = None
        # counters
        self.fsyncs = 0
        self.batches = 0
        self.batched = 0
        self.max_batch = 0

    def adopt(self, next_seq: int, active: int, active_fd: int) -> None:
        """Start from what recovery found: the next ``seq`` and a new, empty active segment."""
        self._seq = next_seq
        self.active, self._active_fd, self._active_size = active, active_fd, 0

    def check_usable(self) -> None:
        if self.closing:
            raise StorageClosed(f"the storage engine on {self._path} is closed")
        if self.failed is not None:
            raise StorageError(f"the storage engine on {self._path} failed earlier: {self.failed}")

    @property
    def pending_writes(self) -> int:
        return len(self._pending.records)

    def wake(self) -> None:
        self._has_work.set()

    async def append(self, key: str, kb: bytes, value: bytes) -> None:
        """Write one record in the next group commit; returns once it is installed (durable
        under the fsync policy)."""
        # Backpressure: at most max_pending_writes puts wait for the disk; more park here.
        # (A ParkingLot rather than a Semaphore: no extra schedule point when there is room.)
        while self._in_flight >= self._max_pending:
            await self._space.park()
            self.check_usable()
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

    async def roll(self) -> None:
        """Seal the active segment (if it holds anything) and start the next one."""
        batch = self._pending
        batch.roll = True
        self._has_work.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def _write_sync(
        self,
        fd: int,
        start: int,
        batch: _Batch,
        prev_written: threading.Event,
        written: threading.Event,
    ) -> int:
        """Write one batch at its reserved offset (worker thread); returns the fsyncs done.

        The bytes go to the file strictly in offset order (``prev_written``), so a crash leaves
        a prefix of the log, never a hole followed by later records; only the fsyncs overlap.
        The locations are computed on the loop: a worker thread holding the GIL for Python work
        that a busy CPU preempts holds up the event loop with it.
        """
        prev_written.wait()
        try:
            if self._fsync is FsyncPolicy.ALWAYS:
                off = start
                for rec in batch.records:
                    write_all(fd, rec, off)
                    os.fdatasync(fd)
                    off += len(rec)
                return len(batch.records)
            write_all(fd, b"".join(batch.records), start)
            written.set()  # the next batch may write now, while this one waits for its fsync
            if self._fsync is FsyncPolicy.BATCH:
                os.fdatasync(fd)
                return 1
            return 0
        finally:
            written.set()

    async def run(self) -> None:
        """The committer task: take what is pending, reserve its place in the segment, write it.

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
                            await self._roll()
                        except OSError as exc:
                            batch.error = storage_error(exc, f"roll of a segment in {self._path}")
                            batch.done.set()
                            continue
                    if batch.records and self.failed is None:
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
                        if self.failed is not None and batch.records:
                            batch.error = self.failed
                        batch.done.set()
                    if self.closing and not self._pending.records:
                        await self._wait_commits(0)
                        await self._repair_after_failure()
                        return
        finally:
            self.done.set()

    async def _roll(self) -> None:
        """Seal the active segment and start the next one (no write in flight)."""
        seg, fd, size = self.active, self._active_fd, self._active_size
        crc, hint = self._active_crc, self._active_hint
        new = self._alloc_segment_id()
        await trio.to_thread.run_sync(os.fsync, fd)
        self._active_fd = -1  # from here on the descriptor is closed, whatever fails next

        def roll_sync() -> tuple[int, int]:
            os.close(fd)
            write_hint(self._path, seg, size, crc, hint)
            return start_segment(self._path, new)

        new_fd, read_fd = await trio.to_thread.run_sync(roll_sync)
        self.active, self._active_fd, self._active_size = new, new_fd, 0
        self._active_crc, self._active_hint = 0, bytearray()
        self._on_new_segment(new, read_fd)

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
            self.failed = StorageError(f"cannot repair a failed write: {exc.strerror or exc}")
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
            seg, off = self.active, start
            for seq, rec in zip(batch.seqs, batch.records, strict=True):
                locs.append(pack(seq, seg, off, len(rec)))
                off += len(rec)
            fsyncs = 0
            try:
                fsyncs = await trio.to_thread.run_sync(
                    self._write_sync, self._active_fd, start, batch, prev_written, written
                )
            except OSError as exc:
                error = exc
            await prev_done.wait()  # acknowledge in offset order
            if self._broken_at is not None:
                # An earlier batch failed: this one lies beyond the cut and is not stored.
                batch.error = self._broken_error
            elif error is not None:
                self._broken_at = start
                self._broken_error = storage_error(error, f"write to {self._path}")
                batch.error = self._broken_error
                self._has_work.set()  # wake the committer to cut the failed bytes off now
            else:
                self.fsyncs += fsyncs
                n = len(locs)
                self.batches += 1
                self.batched += n
                self.max_batch = max(self.max_batch, n)
                self._index.install(batch.keys, locs, batch.kbs, batch.hashes)
                crc, hint, pack_entry = self._active_crc, self._active_hint, HINT_ENTRY.pack
                for rec, kb, seq, loc in zip(
                    batch.records, batch.kbs, batch.seqs, locs, strict=True
                ):
                    crc = zlib.crc32(rec, crc)
                    hint += pack_entry(seq, off_of(loc), len(rec), len(kb))
                    hint += kb
                self._active_crc = crc
        finally:
            self._commits_in_flight -= 1
            self._commit_lot.unpark_all()
            batch.done.set()
            done.set()

    def close_sync(self) -> None:
        """Seal the active segment, or remove it when empty (worker thread, committer done)."""
        fd = self._active_fd
        if fd < 0:
            return
        if self._active_size > 0:
            os.fsync(fd)
            os.close(fd)
            self._active_fd = -1
            write_hint(
                self._path, self.active, self._active_size, self._active_crc, self._active_hint
            )
        else:
            os.close(fd)
            self._active_fd = -1
            (self._path / seg_name(self.active)).unlink(missing_ok=True)

    def close_files_sync(self) -> None:
        """Close the active segment's descriptor without sealing it (a failed open or close)."""
        fd, self._active_fd = self._active_fd, -1
        if fd >= 0:
            os.close(fd)
