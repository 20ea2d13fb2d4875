"""Both storage engines: the interface contract, limits, bad input, the log engine's disk rules."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from _helpers import clock_of, digest, next_clock

from gossipkv import DataDirError, _codec
from gossipkv._dvv import DVVSet, Entry, Sibling
from gossipkv._errors import (
    InvalidClock,
    InvalidKey,
    KeyTooLarge,
    RecordTooLarge,
    StorageClosed,
    StorageFull,
    TooManySiblings,
    ValueNotEncodable,
    ValueTooLarge,
)
from gossipkv.storage import (
    NOT_CACHED,
    FsyncPolicy,
    LogEngine,
    StorageEngine,
    StorageLimits,
    _commit,
    _keydir,
    _log_format,
    _reads,
    open_log_engine,
    open_storage,
    partition_of,
)

ENGINES = ["memory", "log"]


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def _seg_files(path: Path) -> set[str]:
    return {p.name for p in path.glob("*.seg")}


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@asynccontextmanager
async def engine_for(kind: str, tmp_path: Path, **kw: object) -> AsyncIterator[StorageEngine]:
    data_dir = None if kind == "memory" else tmp_path / "data"
    async with open_storage(data_dir, **kw) as eng:  # type: ignore[arg-type]
        yield eng


@pytest.mark.parametrize("kind", ENGINES)
async def test_put_get_roundtrip(kind: str, tmp_path: Path, read_path: str) -> None:
    async with engine_for(kind, tmp_path) as eng:
        assert await eng.get("missing") is None
        c = clock_of({"a": [1, 2]}, "x", None)
        await eng.put("k", c)
        assert await eng.get("k") == c
        c2 = next_clock(c, "y", "n/1/0")
        await eng.put("k", c2)
        assert await eng.get("k") == c2
        tomb = next_clock(c2, None, "m/2/0")
        tomb = DVVSet(
            tuple(
                Entry(e.actor, e.counter, tuple(Sibling.deleted() for _ in e.values))
                for e in tomb.entries
            )
        )
        await eng.put("dead", tomb)
        got = await eng.get("dead")
        assert got is not None and all(s.tombstone for e in got.entries for s in e.values)
        stats = eng.statistics()
        assert stats.keys == 2 and stats.puts == 3


@pytest.mark.parametrize("kind", ENGINES)
async def test_scan_and_partition_hashes(kind: str, tmp_path: Path) -> None:
    async with engine_for(kind, tmp_path) as eng:
        clocks = {f"key{i}": clock_of(i) for i in range(300)}
        async with trio.open_nursery() as nursery:
            for k, c in clocks.items():
                nursery.start_soon(eng.put, k, c)
        seen: dict[str, DVVSet[Sibling]] = {}
        for p in range(8):
            async for key, clock in eng.scan(p, 8):
                assert partition_of(key, 8) == p
                seen[key] = clock
        assert seen == clocks
        hashes = await eng.partition_hashes(8)
        assert set(hashes) == set(range(8))
    # the same contents give the same hashes on the other engine
    other = "log" if kind == "memory" else "memory"
    async with engine_for(other, tmp_path / "other") as eng2:
        for k, c in reversed(list(clocks.items())):
            await eng2.put(k, c)
        assert await eng2.partition_hashes(8) == hashes


@pytest.mark.parametrize("kind", ENGINES)
async def test_bad_input_is_typed_and_harmless(kind: str, tmp_path: Path) -> None:
    # A store refuses beyond replica_slack x the write limits (what merged replicas may reach).
    limits = StorageLimits(
        max_key_bytes=16, max_value_bytes=200, max_siblings=3, max_record_bytes=400,
        replica_slack=1,
    )  # fmt: skip
    async with engine_for(kind, tmp_path, limits=limits) as eng:
        good = clock_of("v")
        await eng.put("k", good)
        with pytest.raises(KeyTooLarge, match="exceeds the 16-byte limit"):
            await eng.put("k" * 17, good)
        with pytest.raises(InvalidKey):
            await eng.put("", good)
        with pytest.raises(InvalidKey):
            await eng.put(b"k", good)  # type: ignore[arg-type]
        with pytest.raises(InvalidKey):
            await eng.put("\ud800", good)
        with pytest.raises(ValueTooLarge, match="200-byte limit"):
            await eng.put("k", clock_of("x" * 300))
        with pytest.raises(ValueNotEncodable):
            await eng.put("k", clock_of(object()))
        with pytest.raises(TooManySiblings, match=r"too many siblings \(4 > 3\)"):
            await eng.put("k", clock_of(1, 2, 3, 4))
        with pytest.raises(RecordTooLarge, match="stores at most 400"):
            await eng.put("k", clock_of("x" * 150, "y" * 150, "z" * 150))
        # A value exactly at the limit is stored: metadata is not counted against it.
        exact = "x" * (200 - 3)  # a 197-character text encodes to 3 + 197 bytes
        await eng.put("exact", clock_of(exact))
        assert await eng.get("exact") == clock_of(exact)
        with pytest.raises(InvalidClock):
            await eng.put("k", DVVSet((Entry("b", 1, ()), Entry("a", 1, ()))))
        with pytest.raises(InvalidClock):
            await eng.put("k", DVVSet((Entry("a", 1, ("raw",)),)))  # type: ignore[arg-type]
        with pytest.raises(InvalidClock):
            await eng.put("k", {"not": "a clock"})  # type: ignore[arg-type]
        with pytest.raises(KeyTooLarge):
            await eng.get("k" * 17)
        assert await eng.get("k") == good
        await eng.aclose()
        with pytest.raises(StorageClosed):
            await eng.get("k")
        with pytest.raises(StorageClosed):
            await eng.put("k", good)


async def test_log_reopen_keeps_everything(tmp_path: Path, read_path: str) -> None:
    expected: dict[str, DVVSet[Sibling]] = {}
    async with open_log_engine(tmp_path, segment_bytes=2048, compact_below=0.0) as eng:
        for i in range(200):
            key = f"k{i % 37}"
            expected[key] = next_clock(expected.get(key), i, "n/1/0")
            await eng.put(key, expected[key])
        assert eng.statistics().segments > 3
    async with open_log_engine(tmp_path, segment_bytes=2048) as eng:
        for key, clock in expected.items():
            assert await eng.get(key) == clock
        st = eng.statistics()
        assert st.hint_files_loaded >= 3
        assert st.corrupt_records_skipped == 0 and st.torn_tail_truncations == 0


@pytest.mark.parametrize("policy", ["always", "batch", "none"])
async def test_group_commit_shares_fsyncs(policy: str, tmp_path: Path) -> None:
    async with open_log_engine(tmp_path, fsync=policy) as eng:
        async with trio.open_nursery() as nursery:
            for i in range(256):
                nursery.start_soon(eng.put, f"k{i}", clock_of(i))
        st = eng.statistics()
        assert st.puts == 256
        if policy == "batch":
            assert st.max_commit_batch > 1
            assert st.fsyncs < 256
        elif policy == "always":
            assert st.fsyncs == 256
        else:
            assert st.fsyncs == 0
    async with open_log_engine(tmp_path) as eng:
        for i in range(256):
            assert await eng.get(f"k{i}") == clock_of(i)


async def test_compaction_under_load_never_loses_or_blocks(tmp_path: Path, read_path: str) -> None:
    latest: dict[str, DVVSet[Sibling]] = {}
    acked: set[str] = set()
    written: dict[str, set[str]] = {}
    async with open_log_engine(tmp_path, segment_bytes=4096, compact_below=0.9) as eng:

        async def writer(w: int) -> None:
            for i in range(150):
                key = f"w{w}-{i % 10}"
                latest[key] = next_clock(latest.get(key), i, f"n/{w}/0")
                written.setdefault(key, set()).add(digest(latest[key]))
                await eng.put(key, latest[key])
                acked.add(key)

        async def reader() -> None:
            for _ in range(300):
                for key in sorted(acked)[:20]:
                    got = await eng.get(key)
                    assert got is not None
                    assert digest(got) in written[key]

        async def compactor() -> None:
            for _ in range(5):
                await eng.compact()
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)
            nursery.start_soon(reader)
            nursery.start_soon(compactor)
        await eng.compact()
        st = eng.statistics()
        assert st.compactions >= 1
        assert st.bytes_reclaimed > 0
        assert st.records == st.keys  # only live records remain after a full compaction
        for key, clock in latest.items():
            assert await eng.get(key) == clock
    files = _files(tmp_path)
    assert not [f for f in files if f.endswith(".tmp")]
    async with open_log_engine(tmp_path) as eng:
        for key, clock in latest.items():
            assert await eng.get(key) == clock


async def test_low_water_mark_keeps_segments_pinned_by_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pins guard the reader thread's reads (a read on the event loop needs none).
    monkeypatch.setattr(_reads, "_RWF_NOWAIT", None)
    async with open_log_engine(tmp_path, segment_bytes=1024) as eng:
        for i in range(60):
            await eng.put(f"k{i % 5}", clock_of(i))
        await eng.compact()  # seal everything into compacted segments
        seg_files_before = _seg_files(tmp_path)
        # Pin a segment with a read that has not run yet, then compact it away underneath.
        assert isinstance(eng, LogEngine)
        loc = eng._keydir["k1"]
        pinned_seg = _keydir.seg_of(loc)
        async with trio.open_nursery() as nursery:
            result: list[bytes] = []

            async def slow_read() -> None:
                result.extend(await eng._reads.read_many([loc]))

            for i in range(60, 70):
                await eng.put(f"k{i % 5}", clock_of(i))
            nursery.start_soon(slow_read)
            nursery.start_soon(eng.compact)
        assert result and result[0]
        assert seg_files_before  # sanity
        assert pinned_seg not in eng._index.seg_bytes or eng._index.seg_live.get(pinned_seg, 0) >= 0


async def test_second_open_is_refused(tmp_path: Path) -> None:
    async with open_log_engine(tmp_path):
        with pytest.raises(DataDirError, match="in use by another process"):
            async with open_log_engine(tmp_path):
                pass
    async with open_log_engine(tmp_path):
        pass  # the lock is released on close


async def test_data_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataDirError, match="is a file"):
        async with open_log_engine(f):
            pass


async def test_unusable_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def read_only(path: object, flags: int, *args: object) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr("gossipkv.storage._recovery.os.open", read_only)
    with pytest.raises(DataDirError, match="Read-only"):
        async with open_log_engine(tmp_path / "ro"):
            pass


async def test_disk_full_is_typed_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_log_engine(tmp_path) as eng:
        await eng.put("a", clock_of(1))
        real = _commit.write_all
        calls = {"n": 0}

        def full(fd: int, data: bytes | memoryview, offset: int) -> None:
            calls["n"] += 1
            # write part of the batch, then fail like a full disk would
            real(fd, bytes(data)[:7], offset)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_commit, "write_all", full)
        with pytest.raises(StorageFull, match="full"):
            await eng.put("b", clock_of(2))
        monkeypatch.setattr(_commit, "write_all", real)
        assert await eng.get("a") == clock_of(1)
        assert await eng.get("b") is None
        await eng.put("c", clock_of(3))
    async with open_log_engine(tmp_path) as eng:
        assert await eng.get("a") == clock_of(1)
        assert await eng.get("b") is None
        assert await eng.get("c") == clock_of(3)
        assert eng.statistics().corrupt_records_skipped == 0


def plant_record(data_dir: Path, key: str, value: bytes) -> None:
    """Write a record with a valid checksum and the newest sequence number into a new segment,
    as a peer of an older version (or a bit flip its checksum cannot see) might have left it."""
    segs = sorted(int(p.stem) for p in data_dir.glob("*.seg"))
    seg = (segs[-1] if segs else 0) + 1
    record = _log_format.encode_record(10**12 + seg, key.encode(), value)
    (data_dir / _log_format.seg_name(seg)).write_bytes(record)


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


UNREADABLE = {
    "not-cbor": b"\xff\xfe",
    # What an older version stored after a forged context: a dot beyond 64 bits (a CBOR bignum).
    "bignum-counter": _codec.dumps_canonical([[["n/1/0", 2**64 + 1, []]], []]),
    # What an older version stored for a value nested 61 deep.
    "too-deep": _codec.dumps_canonical([[["n/1/0", 1, [[_nested(61), False, {}]]]], []]),
    "not-a-clock": _codec.dumps_canonical({"a": 1}),
}


async def test_a_record_failing_its_checksum_is_quarantined(tmp_path: Path, read_path: str) -> None:
    seen: list[str] = []
    async with open_log_engine(tmp_path) as eng:
        eng.on_quarantine = seen.append
        await eng.put("a", clock_of("precious"))
        await eng.put("b", clock_of("fine"))
        assert isinstance(eng, LogEngine)
        loc = eng._keydir["a"]
        seg, off = _keydir.seg_of(loc), _keydir.off_of(loc)
        _flip(tmp_path / _log_format.seg_name(seg), off + _log_format.HEADER_SIZE + 2)
        # Never served as data: moved aside, counted, reported, and the key reads as absent.
        assert await eng.get("a") is None
        assert seen == ["a"]
        assert eng.statistics().quarantined_records == 1
        assert [p.name for p in (tmp_path / "quarantine").iterdir()] == [
            f"{seg:08d}-{off:010d}.rec"
        ]
        assert await eng.get("b") == clock_of("fine")
        assert [k async for k, _ in eng.scan(0, 1)] == ["b"]
        await eng.put("a", clock_of("repaired"))
    async with open_log_engine(tmp_path) as eng:
        assert await eng.get("a") == clock_of("repaired")
        # Recovery meets the damaged (now superseded) record again: kept aside, reported.
        assert eng.statistics().quarantined_records == 1
        assert eng.damaged_at_open() == ["a"]


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
async def test_a_record_that_cannot_be_decoded_is_quarantined(
    kind: str, tmp_path: Path, read_path: str
) -> None:
    async with open_log_engine(tmp_path) as eng:
        await eng.put("good", clock_of("kept"))
    plant_record(tmp_path, "bad", UNREADABLE[kind])
    seen: list[str] = []
    async with open_log_engine(tmp_path) as eng:
        eng.on_quarantine = seen.append
        # A scan (anti-entropy, handoff, the hints at start) skips it and quarantines it.
        assert [k async for k, _ in eng.scan(0, 1)] == ["good"]
        assert seen == ["bad"] and await eng.get("bad") is None
        assert eng.statistics().quarantined_records == 1
        assert await eng.get("good") == clock_of("kept")
    # Not repaired before the restart: found again, quarantined again, never fatal.
    async with open_log_engine(tmp_path) as eng:
        assert await eng.get("bad") is None
        assert eng.statistics().quarantined_records == 1
        await eng.put("bad", clock_of("repaired"))
    async with open_log_engine(tmp_path) as eng:
        assert await eng.get("bad") == clock_of("repaired")


async def test_bad_config(tmp_path: Path) -> None:
    from gossipkv import ConfigError

    with pytest.raises(ConfigError, match="fsync"):
        async with open_log_engine(tmp_path, fsync="sometimes"):
            pass
    assert FsyncPolicy("batch") is FsyncPolicy.BATCH
    assert digest(clock_of(1)) == digest(clock_of(1))


async def test_a_record_in_the_page_cache_is_read_without_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nowait_reads: None
) -> None:
    threads: list[str] = []
    real = trio.to_thread.run_sync

    async def counted(fn, *args, **kw):  # type: ignore[no-untyped-def]
        threads.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kw)

    async with open_log_engine(tmp_path) as eng:
        await eng.put("k", clock_of("v"))
        monkeypatch.setattr(trio.to_thread, "run_sync", counted)
        assert await eng.get("k") == clock_of("v")
        assert "_read_sync" not in threads  # just written: the page cache holds it
        assert eng.statistics().page_cache_reads == 1

        # Not in the page cache (EAGAIN): the reader thread reads it, and gets the same clock.
        def not_cached(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
            raise BlockingIOError(errno.EAGAIN, "would block")

        monkeypatch.setattr(os, "preadv", not_cached)
        assert await eng.get("k") == clock_of("v")
        assert threads.count("_read_sync") == 1

        # A file system that refuses the flag: every later read goes to the thread, for good.
        def refused(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
            raise OSError(errno.EOPNOTSUPP, "not supported")

        monkeypatch.setattr(os, "preadv", refused)
        assert await eng.get("k") == clock_of("v")
        monkeypatch.undo()
        monkeypatch.setattr(trio.to_thread, "run_sync", counted)
        assert await eng.get("k") == clock_of("v")
        assert threads.count("_read_sync") == 3
        assert eng.statistics().page_cache_reads == 1  # the thread's reads are not counted


async def test_a_short_page_cache_read_goes_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nowait_reads: None
) -> None:
    real_preadv = os.preadv
    real_read_sync = _reads.SegmentReads._read_sync
    thread_reads: list[int] = []

    def half(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        # Only the first pages are cached: the kernel fills and counts only what it holds.
        got = real_preadv(fd, buffers, offset, flags)
        buffers[0][got // 2 :] = bytes(len(buffers[0]) - got // 2)
        return got // 2

    def read_sync(self: _reads.SegmentReads, locs: list[int]) -> object:
        thread_reads.append(len(locs))
        return real_read_sync(self, locs)

    async with open_log_engine(tmp_path) as eng:
        await eng.put("k", clock_of("v" * 5000))
        monkeypatch.setattr(os, "preadv", half)
        monkeypatch.setattr(_reads.SegmentReads, "_read_sync", read_sync)
        assert await eng.get("k") == clock_of("v" * 5000)
        assert thread_reads == [1]
        assert eng.statistics().quarantined_records == 0


async def test_large_records_and_scans_are_read_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nowait_reads: None
) -> None:
    """Copying and checking a large record, or a scan's chunk of records, on the event loop
    would hold it: those reads go to the reader thread even when the page cache holds them."""
    real_read_sync = _reads.SegmentReads._read_sync
    thread_reads: list[int] = []

    def read_sync(self: _reads.SegmentReads, locs: list[int]) -> object:
        thread_reads.append(len(locs))
        return real_read_sync(self, locs)

    big = clock_of("v" * (_reads.INLINE_READ_BYTES + 1))
    async with open_log_engine(tmp_path) as eng:
        await eng.put("big", big)
        for i in range(5):
            await eng.put(f"k{i}", clock_of(i))
        monkeypatch.setattr(_reads.SegmentReads, "_read_sync", read_sync)
        assert await eng.get("k0") == clock_of(0)
        assert thread_reads == []
        assert eng.read_cached("big") is NOT_CACHED
        assert await eng.get("big") == big
        assert thread_reads == [1]
        assert len([k async for k, _ in eng.scan(0, 1)]) == 6
        assert sum(thread_reads) == 7


@pytest.mark.parametrize("kind", ENGINES)
async def test_read_cached_answers_without_waiting_or_says_it_cannot(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine_for(kind, tmp_path) as eng:
        await eng.put("k", clock_of("v"))
        assert eng.read_cached("missing") is None
        with pytest.raises(InvalidKey):
            eng.read_cached("")
        if kind == "log" and not _reads.nowait_reads_work(tmp_path):
            assert eng.read_cached("k") is NOT_CACHED
            return
        before = eng.statistics().gets
        assert eng.read_cached("k") == clock_of("v")
        assert eng.statistics().gets == before + 1
        if kind == "memory":
            return

        def not_cached(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
            raise BlockingIOError(errno.EAGAIN, "would block")

        monkeypatch.setattr(os, "preadv", not_cached)
        assert eng.read_cached("k") is NOT_CACHED
        assert eng.statistics().gets == before + 1  # not answered: not counted
        monkeypatch.undo()
    with pytest.raises(StorageClosed):
        eng.read_cached("k")


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
async def test_read_cached_leaves_an_undecodable_record_to_get(kind: str, tmp_path: Path) -> None:
    async with open_log_engine(tmp_path) as eng:
        await eng.put("good", clock_of("kept"))
    plant_record(tmp_path, "bad", UNREADABLE[kind])
    async with open_log_engine(tmp_path) as eng:
        # Never served, never quarantined here (that needs a wait): get does it.
        assert eng.read_cached("bad") is NOT_CACHED
        assert eng.statistics().quarantined_records == 0
        assert await eng.get("bad") is None
        assert eng.statistics().quarantined_records == 1
