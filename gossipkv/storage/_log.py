"""The durable log engine: Write-Ahead Log as a Segmented Log, bitcask-style.

Owns the data dir: append-only segment files of checksummed, length-prefixed records, an in-memory
key directory (key -> where its newest record is), group commit with an fsync policy, segment roll,
hint files for fast start, recovery (torn-tail truncation, corrupt-record skipping) and background
compaction of sealed segments guarded by a Low-Water Mark.

Patterns: *Write-Ahead Log* (a put is acknowledged only once its record is on disk under the fsync
policy), *Segmented Log* (the log is split into segments that are sealed at a size and compacted
whole), *Low-Water Mark* (an obsolete segment is deleted only once no key-directory entry and no
in-flight read still references it).

The on-disk format is in :mod:`._log_format`.

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
changes the in-memory state. Worker threads are handed immutable inputs and return results that the
loop applies. :class:`LogEngine` is the coordinator that owns the mechanisms:

- :mod:`._log_format`: records, segment scanning, hint-file codec (pure);
- :mod:`._keydir`: :class:`LogIndex`, the key directory and per-segment accounting (loop only);
- :mod:`._recovery`: open and recover a data dir, returning a ``Recovered`` value;
- :mod:`._commit`: :class:`GroupCommit`, the active segment and the committer task;
- :mod:`._reads`: :class:`SegmentReads`, the read descriptors and the batching reader task;
- :mod:`._compaction`: :class:`Compactor`, the background and on-demand compactions (plan, copy
  in a thread, apply the ``Compacted`` result on the loop, delete what nothing references);
- this module: the engine's operations, quarantine, closing and statistics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from gossipkv import _dvv
from gossipkv._errors import StorageClosed, StorageCorrupt, StorageError
from gossipkv._merkle import RecordHashes

from ._base import (
    DEFAULT_LIMITS,
    NOT_CACHED,
    Clock,
    FsyncPolicy,
    NotCached,
    StorageEngine,
    StorageLimits,
    StorageStatistics,
    decode_clock,
    encode_clock,
    encode_key,
    partition_digests,
)
from ._commit import GroupCommit
from ._compaction import Compactor
from ._keydir import KeyDir, LogIndex, len_of
from ._log_format import HEADER_SIZE, Unreadable
from ._reads import SegmentReads
from ._recovery import Recovered, open_data_dir
from ._segment_files import link_snapshot, storage_error

_log = logging.getLogger("gossipkv.storage")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PENDING_WRITES = 4096
# A sealed segment whose live bytes fall below this share is compacted in the background.
DEFAULT_COMPACT_BELOW = 0.5
_CHECKPOINT_EVERY = 2048


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
        self.incarnation = int.from_bytes(os.urandom(8), "big")
        self._lock_fd: int | None = None
        self._index = LogIndex()
        # The index's own key directory and hashes (never replaced): one lookup less on a get.
        self._keydir: KeyDir = self._index.keydir
        self.record_hashes: RecordHashes = self._index.record_hashes
        # A read that lets go of its segments may leave some deletable: the compactor looks.
        self._reads = SegmentReads(
            path, self._index.pins, lambda: self._compactor.wake_if_obsolete()
        )
        self._next_seg = 1
        self._writes = GroupCommit(
            path,
            fsync=fsync,
            segment_bytes=segment_bytes,
            max_pending_writes=max_pending_writes,
            index=self._index,
            alloc_segment_id=self._alloc_segment_id,
            on_new_segment=self._on_new_segment,
        )
        self._compactor = Compactor(
            path,
            self._index,
            self._reads,
            active=lambda: self._writes.active,
            segment_bytes=segment_bytes,
            alloc_segment_id=self._alloc_segment_id,
            compact_below=compact_below,
        )
        self._closing = False
        self._closed = False
        # counters
        self._puts = 0
        self._gets = 0
        self._deletes = 0
        self._corrupt = 0
        self._damaged_at_open: list[str] = []
        self._quarantined = 0
        self._torn = 0
        self._hints_loaded = 0
        self._recovery_seconds = 0.0

    # --- opening -----------------------------------------------------------------------------

    def _adopt(self, rec: Recovered) -> None:
        """Take over what recovery found and the files it opened (event loop)."""
        index = self._index
        self._lock_fd = rec.lock_fd
        self._reads.fds = rec.read_fds
        index.keydir.shards = rec.keydir.shards
        index.record_hashes = self.record_hashes = rec.record_hashes
        index.markers = rec.markers
        index.seg_bytes = rec.seg_bytes
        index.seg_records = rec.seg_records
        index.seg_live = rec.seg_live
        index.seg_markers = rec.seg_markers
        index.seg_min_seq = rec.seg_min_seq
        index.register(rec.active)
        self._next_seg = rec.active + 1
        self._writes.adopt(rec.max_seq + 1, rec.active, rec.active_fd)
        self._corrupt = rec.corrupt
        self._damaged_at_open = rec.damaged_keys
        self._quarantined = rec.corrupt  # each damaged span was kept aside
        self._torn = rec.torn
        self._hints_loaded = rec.hints_loaded

    def _alloc_segment_id(self) -> int:
        # Event loop only (the committer's roll and compaction's plan), so no lock.
        seg = self._next_seg
        self._next_seg += 1
        return seg

    def _on_new_segment(self, seg: int, read_fd: int) -> None:
        self._reads.fds[seg] = read_fd
        self._index.register(seg)
        self._compactor.wanted.set()  # a segment was sealed

    def _close_files_sync(self) -> None:
        self._writes.close_files_sync()
        self._reads.close_sync()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # --- writes --------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closing or self._closed:
            raise StorageClosed(f"the storage engine on {self._path} is closed")
        failed = self._writes.failed
        if failed is not None:
            raise StorageError(f"the storage engine on {self._path} failed earlier: {failed}")

    async def put(self, key: str, clock: Clock) -> None:
        self._check_usable()
        kb = encode_key(key, self._limits)
        value = encode_clock(clock, self._limits)
        await self._writes.append(key, kb, value)
        self._puts += 1

    async def delete(self, key: str) -> bool:
        """Append a delete marker for ``key`` (see the module docstring); ``False`` without
        writing anything when the key is not stored."""
        self._check_usable()
        kb = encode_key(key, self._limits)
        if self._keydir.get(key) is None:
            await trio.lowlevel.checkpoint()
            return False
        await self._writes.append(key, kb, b"")
        self._deletes += 1
        return True

    # --- reads --------------------------------------------------------------------------

    def stored_bytes(self, key: str) -> int | None:
        loc = self._keydir.get(key)
        if loc is None:
            return None
        return len_of(loc) - HEADER_SIZE - len(key.encode("utf-8"))

    async def get(self, key: str) -> Clock | None:
        """The stored clock of ``key``; ``None`` if it was never stored here or its record was
        unreadable (then quarantined: see the module docstring).

        Raises:
          InvalidKey: a bad key. StorageError: an I/O error. StorageClosed: closed.
        """
        clock = self.read_cached(key)
        if clock is not NOT_CACHED:
            await trio.lowlevel.checkpoint()
            return clock
        self._gets += 1
        loc = self._keydir[key]  # read_cached found it, and nothing ran since
        raw = (await self._reads.read_many([loc]))[0]
        return await self._decoded(key, loc, raw)

    def read_cached(self, key: str) -> Clock | NotCached | None:
        """:meth:`get` without waiting, when the page cache holds the record (see
        :meth:`StorageEngine.read_cached`)."""
        self._check_usable()
        encode_key(key, self._limits)
        loc = self._keydir.get(key)
        clock: Clock | None = None
        if loc is not None:
            raw = self._reads.read_cached(loc)
            if raw is None:
                return NOT_CACHED
            decoded = self._decode(key, raw)
            if isinstance(decoded, Unreadable):
                return NOT_CACHED  # get reads it again, and quarantines it
            clock = decoded
        self._gets += 1
        return clock

    def _decode(self, key: str, raw: bytes | Unreadable) -> Clock | Unreadable:
        if isinstance(raw, Unreadable):
            return raw
        try:
            return decode_clock(raw, f"{self._path} key {key!r}", self._limits)
        except StorageCorrupt as exc:
            return Unreadable(str(exc))

    async def _decoded(self, key: str, loc: int, raw: bytes | Unreadable) -> Clock | None:
        """Decode a record read back, or quarantine it when it is unreadable (``None``)."""
        clock = self._decode(key, raw)
        if isinstance(clock, Unreadable):
            await self._quarantine(key, loc, clock.reason)
            return None
        return clock

    async def _quarantine(self, key: str, loc: int, reason: str) -> None:
        """Copy an unreadable record aside and forget it, unless a newer record of ``key`` was
        installed meanwhile (compare-and-set on the key directory, as compaction does)."""
        kept = await self._reads.copy_aside(loc)
        if not self._index.forget(key, loc):
            return  # superseded by a newer write: nothing to forget
        self._quarantined += 1
        _log.warning("quarantined the unreadable record of %r: %s; copy %s", key, reason, kept)
        if self.on_quarantine is not None:
            self.on_quarantine(key)

    def damaged_at_open(self) -> list[str]:
        """Keys whose record was found damaged inside a segment when the engine opened (kept
        in ``quarantine/``; the key now reads as an older version or as absent here)."""
        return list(self._damaged_at_open)

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
            raws = await self._reads.read_many([loc for _, loc in present])
            for (key, loc), raw in zip(present, raws, strict=True):
                clock = await self._decoded(key, loc, raw)
                if clock is not None:
                    yield key, clock

    async def records(self, keys: list[str]) -> AsyncIterator[tuple[str, bytes]]:
        self._check_usable()
        for i in range(0, len(keys), 256):
            chunk = [(k, self._keydir.get(k)) for k in keys[i : i + 256]]
            present = [(k, loc) for k, loc in chunk if loc is not None]
            raws = await self._reads.read_many([loc for _, loc in present])
            for (key, loc), raw in zip(present, raws, strict=True):
                if isinstance(raw, Unreadable):
                    await self._quarantine(key, loc, raw.reason)
                else:
                    yield key, raw

    async def partition_hashes(self, partitions: int) -> dict[int, bytes]:
        self._check_usable()
        items = self._keydir.items()
        pairs: list[tuple[str, bytes]] = []
        for i in range(0, len(items), 1024):
            chunk = items[i : i + 1024]
            raws = await self._reads.read_many([loc for _, loc in chunk])
            for (key, loc), raw in zip(chunk, raws, strict=True):
                if isinstance(raw, Unreadable):
                    await self._quarantine(key, loc, raw.reason)
                else:
                    pairs.append((key, raw))
        return await trio.to_thread.run_sync(partition_digests, pairs, partitions)

    # --- snapshot --------------------------------------------------------------------------------

    async def snapshot(self, dest: Path) -> tuple[int, int]:
        """Hard-link a consistent copy of the store into ``dest`` (see
        :meth:`StorageEngine.snapshot`): the active segment is sealed first, so the copy holds
        every write acknowledged before the call; compaction waits meanwhile, so no segment the
        copy needs is replaced or deleted under it."""
        self._check_usable()
        async with self._compactor.lock:
            await self._writes.roll()
            active = self._writes.active
            obsolete = self._index.obsolete
            segs = sorted(s for s in self._reads.fds if s != active and s not in obsolete)
            try:
                return await trio.to_thread.run_sync(link_snapshot, self._path, dest, segs)
            except OSError as exc:
                raise storage_error(exc, f"snapshot into {dest}") from exc

    # --- compaction ------------------------------------------------------------------------------

    async def compact(self) -> None:
        """Seal the active segment and compact every sealed segment holding superseded records."""
        self._check_usable()
        # Seal the active segment so its superseded records can go too.
        await self._writes.roll()
        await self._compactor.compact_all()

    # --- closing and statistics ------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed or self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        self._writes.closing = True
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + 60
            self._writes.wake()
            await self._writes.done.wait()
            async with self._compactor.lock:
                await trio.to_thread.run_sync(self._close_sync)
        self._closed = True

    def _close_sync(self) -> None:
        try:
            self._writes.close_sync()
        finally:
            self._close_files_sync()

    def statistics(self) -> StorageStatistics:
        index, writes = self._index, self._writes
        return StorageStatistics(
            engine="log",
            fsync=self._fsync.value,
            keys=len(self._keydir),
            records=sum(index.seg_records.values()),
            segments=len(index.seg_bytes),
            disk_bytes=sum(index.seg_bytes.values()),
            live_bytes=sum(index.seg_live.values()),
            puts=self._puts,
            gets=self._gets,
            deletes=self._deletes,
            delete_markers=len(index.markers),
            fsyncs=writes.fsyncs,
            commit_batches=writes.batches,
            max_commit_batch=writes.max_batch,
            mean_commit_batch=writes.batched / writes.batches if writes.batches else 0.0,
            pending_writes=writes.pending_writes,
            compactions=self._compactor.compactions,
            compaction_errors=self._compactor.errors,
            bytes_reclaimed=self._compactor.reclaimed,
            corrupt_records_skipped=self._corrupt,
            quarantined_records=self._quarantined,
            torn_tail_truncations=self._torn,
            hint_files_loaded=self._hints_loaded,
            recovery_seconds=self._recovery_seconds,
            page_cache_reads=self._reads.inline_reads,
        )


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
    engine._adopt(await trio.to_thread.run_sync(open_data_dir, engine._path))
    engine._recovery_seconds = trio.current_time() - started
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine._writes.run)
            nursery.start_soon(engine._reads.run)
            nursery.start_soon(engine._compactor.run)
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
