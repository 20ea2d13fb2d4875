"""Compaction racing writes and failing halfway: the engine applies a compaction's result on the
event loop, per key only where the location it copied is still the current one, and a compaction
that fails leaves nothing behind that could bring a key back after a restart."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
import trio
from _helpers import clock_of

from gossipkv._dvv import DVVSet, Sibling
from gossipkv._errors import StorageError, StorageFull
from gossipkv.storage import StorageEngine, _recovery, _segment_files, open_log_engine

VALUE = "v" * 100  # records of ~150 bytes: several per 1 KiB segment


async def _fill(eng: StorageEngine, keys: int) -> None:
    for i in range(keys):
        await eng.put(f"k{i}", clock_of(VALUE, i))
    for i in range(0, keys, 2):  # superseded records in every segment: all are victims
        await eng.put(f"k{i}", clock_of(VALUE, i, "again"))


def _expected(i: int) -> DVVSet[Sibling]:
    return clock_of(VALUE, i, "again") if i % 2 == 0 else clock_of(VALUE, i)


async def test_a_failed_compaction_leaves_no_output_that_brings_deleted_keys_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace
    renamed: list[str] = []

    def full_on_second_output(src: object, dst: object) -> None:
        if str(src).endswith(".seg.tmp"):
            if renamed:
                raise OSError(errno.ENOSPC, "No space left on device")
            renamed.append(str(dst))
        real_replace(src, dst)  # type: ignore[arg-type]

    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        await _fill(eng, 40)
        monkeypatch.setattr(os, "replace", full_on_second_output)
        with pytest.raises(StorageFull):
            await eng.compact()
        monkeypatch.setattr(os, "replace", real_replace)
        assert renamed  # one output was complete when the next one failed
        for i in range(40):
            assert await eng.get(f"k{i}") == _expected(i)
        for i in range(40):
            assert await eng.delete(f"k{i}") is True
        await eng.compact()  # drops the markers: no older record of their keys is tracked
        assert eng.statistics().keys == 0
    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        back = [i for i in range(40) if await eng.get(f"k{i}") is not None]
        assert back == []
        assert eng.statistics().keys == 0


async def test_writes_that_race_a_compaction_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace
    copying = threading.Event()  # the worker is inside the compaction, holding its copies
    resume = threading.Event()

    def pause_on_first_output(src: object, dst: object) -> None:
        if str(src).endswith(".seg.tmp") and not copying.is_set():
            copying.set()
            resume.wait(10)
        real_replace(src, dst)  # type: ignore[arg-type]

    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        await _fill(eng, 40)
        monkeypatch.setattr(os, "replace", pause_on_first_output)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(eng.compact)
            await trio.to_thread.run_sync(copying.wait, 10)
            # k1 and k3 were copied (live when the compaction looked): overwrite one, delete
            # the other while the copies are in flight.
            await eng.put("k1", clock_of("newer"))
            assert await eng.delete("k3") is True
            resume.set()
        monkeypatch.setattr(os, "replace", real_replace)
        assert eng.statistics().compactions >= 1
        assert await eng.get("k1") == clock_of("newer")
        assert await eng.get("k3") is None
        for i in range(4, 40):
            assert await eng.get(f"k{i}") == _expected(i)
        await eng.compact()
        assert await eng.get("k1") == clock_of("newer")
        assert await eng.get("k3") is None
    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        assert await eng.get("k1") == clock_of("newer")
        assert await eng.get("k3") is None
        for i in range(4, 40):
            assert await eng.get(f"k{i}") == _expected(i)


async def test_a_failed_deletion_of_compacted_segments_is_finished_not_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The segments a compaction replaced are listed before their files go: a deletion that
    # fails is retried by the next compaction, and one a crash cut short is finished at open.
    # Forgotten, they would stay on disk untracked, and be read back as live at the next open.
    real_unlink = Path.unlink
    failing = [True]

    def eio_on_segments(self: Path, missing_ok: bool = False) -> None:
        if failing[0] and self.name.endswith(".seg"):
            raise OSError(errno.EIO, "Input/output error")
        real_unlink(self, missing_ok=missing_ok)

    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        await _fill(eng, 40)
        for i in range(40):
            assert await eng.delete(f"k{i}") is True
        monkeypatch.setattr(Path, "unlink", eio_on_segments)
        with pytest.raises(StorageError, match="deleting compacted segments"):
            await eng.compact()
        for i in range(40):
            assert await eng.get(f"k{i}") is None
        failing[0] = False
        await eng.compact()  # retries what the failed deletion left
        on_disk = len(list(tmp_path.glob("*.seg")))  # noqa: ASYNC240 - a test's look
        assert on_disk == eng.statistics().segments, (on_disk, eng.statistics().segments)
        assert not (tmp_path / "obsolete").exists()
        # Cut short again, then "crash" (the engine is closed with the list still on disk).
        failing[0] = True
        await eng.put("late", clock_of(VALUE))
        await eng.delete("late")
        with pytest.raises(StorageError):
            await eng.compact()
        assert (tmp_path / "obsolete").exists()
        failing[0] = False
    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        assert not (tmp_path / "obsolete").exists()  # finished at open
        assert [i for i in range(40) if await eng.get(f"k{i}") is not None] == []
        assert await eng.get("late") is None
        assert eng.statistics().keys == 0


async def test_compaction_and_recovery_stream_segments_through_a_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Records of 60 to 900 bytes read through a 256-byte window: some span two windows, some
    # are larger than one. No read holds more than the window or one record, so a compaction
    # or a recovery never holds a segment whole.
    monkeypatch.setattr(_segment_files, "WINDOW", 256)
    monkeypatch.setattr(_recovery, "WINDOW", 256)
    real_pread = os.pread
    largest = [0]

    def watched_pread(fd: int, n: int, off: int) -> bytes:
        largest[0] = max(largest[0], n)
        return real_pread(fd, n, off)

    values = {f"k{i}": "w" * ((i * 37) % 900) for i in range(60)}
    async with open_log_engine(tmp_path, segment_bytes=4096, compact_below=0.0) as eng:
        for key, value in values.items():
            await eng.put(key, clock_of(value))
        for i in range(0, 60, 3):
            values[f"k{i}"] += "!"
            await eng.put(f"k{i}", clock_of(values[f"k{i}"]))
        assert await eng.delete("k1") is True
        del values["k1"]
        monkeypatch.setattr(os, "pread", watched_pread)
        await eng.compact()
        monkeypatch.setattr(os, "pread", real_pread)
        assert eng.statistics().compactions >= 1
        assert 0 < largest[0] < 4096
        for key, value in values.items():
            assert await eng.get(key) == clock_of(value), key
        assert await eng.get("k1") is None
    largest[0] = 0
    monkeypatch.setattr(os, "pread", watched_pread)
    async with open_log_engine(tmp_path, segment_bytes=4096, compact_below=0.0) as eng:
        monkeypatch.setattr(os, "pread", real_pread)
        assert eng.statistics().hint_files_loaded == eng.statistics().segments - 1
        assert 0 < largest[0] < 4096
        got = {key: clock async for key, clock in eng.scan(0, 1)}
        assert got == {key: clock_of(value) for key, value in values.items()}


async def test_compacting_a_segment_whose_hint_is_gone_scans_it(tmp_path: Path) -> None:
    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        await _fill(eng, 40)
        await eng.compact()  # seals the active segment: every segment has its hint now
        for i in range(0, 40, 4):
            await eng.put(f"k{i}", clock_of(VALUE, i, "third"))
        hints = sorted(tmp_path.glob("*.hint"))  # noqa: ASYNC240 - a test's look
        for hint in hints[::2]:
            hint.unlink()
        hints[1].write_bytes(b"not a hint")
        await eng.compact()
        for i in range(40):
            want = clock_of(VALUE, i, "third") if i % 4 == 0 else _expected(i)
            assert await eng.get(f"k{i}") == want, i
    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        for i in range(40):
            want = clock_of(VALUE, i, "third") if i % 4 == 0 else _expected(i)
            assert await eng.get(f"k{i}") == want, i
