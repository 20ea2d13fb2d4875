"""Per-peer snapshots of the log engine: a consistent, openable copy of every write acknowledged
before the call, unaffected by what the live engine does afterwards (writes, deletes,
compaction), as ``nodetool snapshot`` gives for SSTables."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _helpers import clock_of

from gossipkv._errors import StorageError
from gossipkv.storage import MemoryEngine, open_log_engine

VALUE = "v" * 100


async def test_a_snapshot_holds_what_was_acknowledged_and_nothing_later(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    async with open_log_engine(tmp_path / "live", segment_bytes=2048) as eng:
        for i in range(60):
            await eng.put(f"k{i}", clock_of(VALUE, i))
        await eng.delete("k0")
        # Concurrent writers keep going while the snapshot is taken: the copy holds each of
        # their keys either as it was before or after, never a torn record.
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                for i in range(60, 120):
                    await eng.put(f"k{i}", clock_of(VALUE, i))

            nursery.start_soon(writer)
            files, size = await eng.snapshot(snap)
        assert files > 1 and size > 0
        # Afterwards the live engine moves on: overwrites, deletes, compaction.
        for i in range(1, 30):
            await eng.put(f"k{i}", clock_of(VALUE, i, "after"))
        for i in range(30, 40):
            await eng.delete(f"k{i}")
        await eng.compact()
        live_keys = set(await eng.keys(0, 1))
    assert "k35" not in live_keys
    async with open_log_engine(snap) as copy:
        assert await copy.get("k0") is None  # deleted before the snapshot
        for i in range(1, 60):
            assert await copy.get(f"k{i}") == clock_of(VALUE, i), i  # as they were
        later = [i for i in range(60, 120) if await copy.get(f"k{i}") is not None]
        # The writer's keys: whatever it had written when the snapshot sealed, each whole.
        for i in later:
            assert await copy.get(f"k{i}") == clock_of(VALUE, i)
        assert later == list(range(60, 60 + len(later)))


async def test_a_snapshot_refuses_an_existing_destination_and_a_memory_engine(
    tmp_path: Path,
) -> None:
    (tmp_path / "taken").mkdir()
    async with open_log_engine(tmp_path / "live") as eng:
        await eng.put("k", clock_of(VALUE))
        with pytest.raises(StorageError, match="snapshot into"):
            await eng.snapshot(tmp_path / "taken")
        assert await eng.get("k") == clock_of(VALUE)  # the engine keeps serving
    with pytest.raises(StorageError, match="nothing on disk"):
        await MemoryEngine().snapshot(tmp_path / "mem")
