"""Deleting keys (how reaped tombstones and delivered hints go away): both engines forget the key,
the log engine keeps a delete marker until compaction may drop it, and nothing deleted comes back
after a restart, before, during or after compaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import clock_of, next_clock

from gossipkv.storage import open_log_engine, open_storage

ENGINES = ["memory", "log"]


def _drop_hint_files(path: Path) -> None:
    for hint in path.glob("*.hint"):
        hint.unlink()


@pytest.mark.parametrize("kind", ENGINES)
async def test_delete_forgets_the_key(kind: str, tmp_path: Path) -> None:
    data_dir = None if kind == "memory" else tmp_path / "data"
    async with open_storage(data_dir) as eng:
        for i in range(20):
            await eng.put(f"k{i}", clock_of(i))
        assert await eng.delete("k3") is True
        assert await eng.delete("k3") is False  # nothing stored: nothing written
        assert await eng.delete("never") is False
        assert await eng.get("k3") is None
        assert eng.stored_bytes("k3") is None
        keys = [k for p in range(4) for k in await eng.keys(p, 4)]
        assert "k3" not in keys and len(keys) == 19
        scanned = [k for p in range(4) async for k, _ in eng.scan(p, 4)]
        assert "k3" not in scanned
        stats = eng.statistics()
        assert stats.keys == 19 and stats.deletes == 1
        # A key put again after its delete is an ordinary key.
        await eng.put("k3", clock_of("again"))
        assert await eng.get("k3") == clock_of("again")
        assert eng.statistics().delete_markers == 0


async def test_log_compaction_reclaims_deleted_keys(tmp_path: Path) -> None:
    # Small segments: each key's older versions and its marker land in different segments.
    async with open_log_engine(tmp_path, segment_bytes=2048, compact_below=0.0) as eng:
        clocks = {}
        for round_ in range(3):
            for i in range(60):
                key = f"key{i}"
                clocks[key] = next_clock(clocks.get(key), f"v{round_}-{i}" * 4, "n/1/0")
                await eng.put(key, clocks[key])
        for i in range(0, 60, 2):
            assert await eng.delete(f"key{i}")
        before = eng.statistics()
        assert before.delete_markers == 30 and before.keys == 30
        await eng.compact()
        after = eng.statistics()
        assert after.delete_markers == 0, after
        assert after.records == after.keys == 30
        assert after.disk_bytes < before.disk_bytes / 3
    async with open_log_engine(tmp_path, segment_bytes=2048) as eng:
        for i in range(60):
            got = await eng.get(f"key{i}")
            assert (got is None) == (i % 2 == 0), i
            if got is not None:
                assert got == clocks[f"key{i}"]
        assert eng.statistics().records == 30


async def test_log_markers_survive_restart_before_compaction(tmp_path: Path) -> None:
    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        for i in range(40):
            await eng.put(f"k{i}", clock_of(f"old-{i}" * 8))
        for i in range(40):
            await eng.delete(f"k{i}")
        await eng.put("k7", clock_of("new"))
    # Reopened from hint files, then again from the raw segments (hints gone).
    for drop_hints in (False, True):
        if drop_hints:
            _drop_hint_files(tmp_path)
        async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
            assert await eng.get("k3") is None
            assert await eng.get("k7") == clock_of("new")
            st = eng.statistics()
            assert st.keys == 1 and st.delete_markers == 39


async def test_log_background_compaction_keeps_markers_until_older_records_are_gone(
    tmp_path: Path,
) -> None:
    # Compact one segment at a time (as the background compactor may): a marker must stay on
    # disk while an older record of its key is still in another segment.
    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        for i in range(30):
            await eng.put(f"k{i}", clock_of(f"old-{i}" * 8))
        for i in range(30):
            await eng.delete(f"k{i}")
        await eng.put("filler", clock_of("x" * 900))  # rolls the markers' segment
        newest = max(eng._index.seg_bytes)
        # Only the segments holding markers, not the ones with the old records.
        marked = {s for s, b in eng._index.seg_markers.items() if b > 0}
        await eng._compactor._compact(lambda seg, live, total: seg in marked and seg != newest)
        assert eng.statistics().delete_markers == 30
    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        assert all([await eng.get(f"k{i}") is None for i in range(30)])
        await eng.compact()
        assert eng.statistics().delete_markers == 0
    async with open_log_engine(tmp_path, segment_bytes=1024, compact_below=0.0) as eng:
        assert all([await eng.get(f"k{i}") is None for i in range(30)])
        assert eng.statistics().keys == 1
