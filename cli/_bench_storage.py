"""``gossipkv bench storage``: load the durable log engine and report throughput, recovery and size.

Writes K keys from 64 concurrent writers, overwrites every key three more times, reads them all,
measures the data dir, compacts, measures again, closes and reopens (recovery). A Trio task ticking
every millisecond records the worst event-loop stall. Numbers, never pass/fail.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from rich.progress import Progress

from gossipkv import GossipKVError
from gossipkv.storage import DVVSet, Entry, Sibling, StorageEngine, open_storage

from ._common import fail

WRITERS = 64
OVERWRITES = 3


@dataclass(frozen=True)
class StorageBenchResult:
    """The ``--json`` output (stable field names)."""

    keys: int
    value_size: int
    fsync: str
    put_per_s: float
    get_per_s: float
    recovery_s: float
    rss_mb: float
    disk_mb: float
    disk_mb_after_compaction: float
    max_loop_lag_ms: float


def _peak_rss_mb() -> float:
    # VmHWM is the peak resident set size; read /proc rather than depending on psutil.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _dir_mb(path: Path) -> float:
    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file()) / 1e6


class _LoopLag:
    """Ticks every millisecond and keeps the worst lateness seen (an event-loop stall)."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        next_at = trio.current_time()
        while True:
            next_at += 0.001
            await trio.sleep_until(next_at)
            now = trio.current_time()
            self.worst = max(self.worst, now - next_at)
            next_at = max(next_at, now)


async def _fan_out(count: int, job: Callable[[int], Awaitable[None]], done: list[int]) -> float:
    """Run ``job(i)`` for ``i`` in ``range(count)`` from WRITERS tasks; returns the elapsed time."""
    started = trio.current_time()

    async def worker(w: int) -> None:
        for i in range(w, count, WRITERS):
            await job(i)
            done[0] += 1

    async with trio.open_nursery() as nursery:
        for w in range(WRITERS):
            nursery.start_soon(worker, w)
    return trio.current_time() - started


async def run_storage_bench(
    keys: int, value_size: int, data_dir: Path, fsync: str, progress: Progress | None
) -> StorageBenchResult:
    """Run the benchmark in the current Trio run (see the module docstring)."""
    # As a peer does once it serves (see ``gossipkv peer``): startup's objects out of the
    # collector's sight, and the GIL handed back to the event loop within 1 ms, not 5.
    gc.freeze()
    sys.setswitchinterval(0.001)
    lag = _LoopLag()
    payload = os.urandom(value_size)
    total_ops = keys * (1 + OVERWRITES) + keys
    done = [0]
    task = progress.add_task("storage", total=total_ops) if progress is not None else None

    def key_of(i: int) -> str:
        return f"key:{i:09d}"

    def clock_of(i: int, round_no: int, actor: str) -> DVVSet[Sibling]:
        # The clock a coordinator would store after this key's round_no-th blind overwrite.
        data = payload[: value_size - 8] + i.to_bytes(8, "big") if value_size >= 8 else payload
        return DVVSet((Entry(actor, round_no, (Sibling(data),)),))

    async def show() -> None:
        while progress is not None and task is not None:
            progress.update(task, completed=done[0])
            progress.refresh()
            await trio.sleep(0.1)

    async with trio.open_nursery() as outer:
        outer.start_soon(lag.run)
        outer.start_soon(show)
        # Background compaction off while loading, so disk_mb is what three overwrites cost and
        # disk_mb_after_compaction what one compaction reclaims (it runs the same code path).
        async with open_storage(data_dir, fsync=fsync, compact_below=0.0) as eng:
            actor = f"bench/{eng.incarnation:x}/0"
            put_time = 0.0
            for round_no in range(1, OVERWRITES + 2):

                async def put(i: int, r: int = round_no, e: StorageEngine = eng) -> None:
                    await e.put(key_of(i), clock_of(i, r, actor))

                put_time += await _fan_out(keys, put, done)

            async def get(i: int, e: StorageEngine = eng) -> None:
                if await e.get(key_of(i)) is None:
                    raise GossipKVError(f"bench: key {key_of(i)} missing after write")

            get_time = await _fan_out(keys, get, done)
            disk_mb = await trio.to_thread.run_sync(_dir_mb, data_dir)
            await eng.compact()
            disk_after = await trio.to_thread.run_sync(_dir_mb, data_dir)
        started = trio.current_time()
        async with open_storage(data_dir, fsync=fsync) as eng:
            recovery_s = trio.current_time() - started
            recovered = eng.statistics().keys
        if recovered != keys:
            raise GossipKVError(f"bench: recovered {recovered} keys, expected {keys}")
        if progress is not None and task is not None:
            progress.update(task, completed=total_ops)
            progress.refresh()
        outer.cancel_scope.cancel()
    return StorageBenchResult(
        keys=keys,
        value_size=value_size,
        fsync=fsync,
        put_per_s=round(keys * (1 + OVERWRITES) / put_time, 1),
        get_per_s=round(keys / get_time, 1),
        recovery_s=round(recovery_s, 3),
        rss_mb=round(_peak_rss_mb(), 1),
        disk_mb=round(disk_mb, 2),
        disk_mb_after_compaction=round(disk_after, 2),
        max_loop_lag_ms=round(lag.worst * 1000, 2),
    )


#: What a peer keeps in its data dir (``gossipkv peer --data-dir``): the membership record and
#: its lock, the replica's log engine and the hints' log engine.
_PEER_MARKERS = ("membership.cbor", "membership.lock", "data", "hints")


def refuse_peer_data_dir(path: Path) -> None:
    """Refuse, in one line, a peer's data dir (live or not) or any folder that holds files.

    The benchmark writes its own records and counts on an empty engine; in a peer's data dir
    it would mix them into the peer's state (and a live peer holds the lock of its engines).
    """
    if not path.is_dir():
        return  # a new folder, or a file: open_storage says what is wrong with a file
    marks = [m for m in _PEER_MARKERS if (path / m).exists()]
    if marks:
        holder = _lock_holder(path / "data" / "LOCK") or _lock_holder(path / "membership.lock")
        live = f", in use by pid {holder}" if holder else ""
        fail(
            f"--data-dir {path} is a peer's data dir ({', '.join(marks)}{live}); "
            "bench storage needs an empty or new folder"
        )
    if any(path.iterdir()):
        fail(f"--data-dir {path} is not empty; bench storage needs an empty or new folder")


def _lock_holder(lock: Path) -> str | None:
    """The pid written in a lock file that some process holds now (``flock``), or ``None``."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
