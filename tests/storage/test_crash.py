"""Crash tests: SIGKILL a writing process at random moments; damage files; recovery must hold.

Every acknowledged write must be present with its exact clock after a restart (a write in flight
at the kill may or may not be there); damaged files recover by dropping only the damaged part.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from _helpers import clock_of, digest

from gossipkv._dvv import DVVSet, Sibling
from gossipkv.storage import _log_format, open_log_engine

WRITER = Path(__file__).with_name("_writer.py")
KILLS = 20


def _start(data_dir: Path, fsync: str, seed: int, writers: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), fsync, str(seed), str(writers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Unbuffered: readline() of READY must not swallow later lines into a buffer that
        # communicate() (which reads the raw pipe) would then never see.
        bufsize=0,
    )


def _parse(stdout: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """Last acknowledged digest per key, and the write in flight after it (if any)."""
    acked: dict[str, str] = {}
    inflight: dict[str, str] = {}
    for line in stdout.split(b"\n")[:-1]:  # the last piece may be cut by the kill
        parts = line.decode().split()
        if len(parts) != 3:
            continue
        kind, key, dig = parts
        if kind == "BEGIN":
            inflight[key] = dig
        elif kind == "ACK":
            acked[key] = dig
            inflight.pop(key, None)
    return acked, inflight


async def _snapshot(data_dir: Path) -> tuple[dict[str, str], int, int]:
    async with open_log_engine(data_dir) as eng:
        got = {key: digest(clock) async for key, clock in eng.scan(0, 1)}
        st = eng.statistics()
        return got, st.torn_tail_truncations, st.corrupt_records_skipped


# 64 writers make batches of up to 64 records, two of them on their way to the disk at a kill.
@pytest.mark.parametrize(("fsync", "writers"), [("always", 8), ("batch", 8), ("batch", 64)])
async def test_sigkill_at_random_moments(fsync: str, writers: int, tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    must: dict[str, str] = {}  # acked across all runs (a later run may overwrite it)
    total_acked = 0
    for kill in range(KILLS):
        proc = _start(data_dir, fsync, seed + kill, writers)
        assert proc.stdout is not None
        first = await trio.to_thread.run_sync(proc.stdout.readline)
        assert first.strip() == b"READY", (first, proc.stderr.read() if proc.stderr else b"")
        await trio.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, _ = await trio.to_thread.run_sync(proc.communicate)
        acked, inflight = _parse(out)
        total_acked += len(acked)
        got, _, corrupt = await _snapshot(data_dir)
        where = f"(seed={seed}, kill {kill}, fsync={fsync}, writers={writers})"
        assert corrupt == 0, f"acked data damaged {where}"
        for key, dig in {**must, **acked}.items():
            ok = {acked.get(key, dig), inflight.get(key)}
            assert got.get(key) in ok, f"acknowledged write of {key} lost {where}"
        # the next run starts from what is on disk now
        must = {k: got[k] for k in {**must, **acked}}
        for key, dig in inflight.items():
            if got.get(key) == dig:
                must[key] = dig
    assert total_acked > 0, f"the writer never acknowledged a write (seed={seed})"


def _write_dataset(data_dir: Path, n: int) -> dict[str, DVVSet[Sibling]]:
    clocks = {f"key-{i:04d}": clock_of(f"value {i}" * 3) for i in range(n)}

    async def fill() -> None:
        async with open_log_engine(data_dir, compact_below=0.0) as eng:
            for k, c in clocks.items():
                await eng.put(k, c)

    trio.run(fill)
    return clocks


def _only_segment(data_dir: Path) -> Path:
    segs = [p for p in data_dir.glob("*.seg") if p.stat().st_size > 0]
    assert len(segs) == 1
    return segs[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, DVVSet[Sibling]]]:
    base = tmp_path_factory.mktemp("dataset")
    return base, _write_dataset(base, 120)


def _copy(src: Path, dst: Path) -> None:
    dst.mkdir()
    for p in src.iterdir():
        if p.name != "LOCK":
            (dst / p.name).write_bytes(p.read_bytes())


def _check_recovered(
    data_dir: Path, clocks: dict[str, DVVSet[Sibling]], lost: set[str]
) -> tuple[int, int]:
    async def check() -> tuple[int, int]:
        async with open_log_engine(data_dir) as eng:
            for key, clock in clocks.items():
                got = await eng.get(key)
                if key in lost:
                    assert got is None, key
                else:
                    assert got == clock, key
            st = eng.statistics()
            return st.torn_tail_truncations, st.corrupt_records_skipped

    return trio.run(check)


@pytest.mark.parametrize("trial", range(8))
def test_truncated_at_random_offsets(
    trial: int, dataset: tuple[Path, dict[str, DVVSet[Sibling]]], tmp_path: Path
) -> None:
    src, clocks = dataset
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    data_dir = tmp_path / "d"
    _copy(src, data_dir)
    seg = _only_segment(data_dir)
    data = seg.read_bytes()
    entries = _log_format.scan_segment(data).entries
    cut = rng.randrange(1, len(data))
    with open(seg, "r+b") as f:
        f.truncate(cut)
    lost = {kb.decode() for kb, _, off, length in entries if off + length > cut}
    torn, corrupt = _check_recovered(data_dir, clocks, lost)
    assert corrupt == 0, f"seed={seed}"
    # a cut inside a record is a torn tail; a cut on a record boundary leaves nothing torn
    assert torn == (0 if cut in {off for _, _, off, _ in entries} else 1), f"seed={seed}"


@pytest.mark.parametrize("trial", range(8))
def test_flipped_bits_skip_only_the_damaged_record(
    trial: int, dataset: tuple[Path, dict[str, DVVSet[Sibling]]], tmp_path: Path
) -> None:
    src, clocks = dataset
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    data_dir = tmp_path / "d"
    _copy(src, data_dir)
    seg = _only_segment(data_dir)
    data = bytearray(seg.read_bytes())
    entries = _log_format.scan_segment(bytes(data)).entries
    # damage one record that is not the last (the last one would look like a torn tail)
    kb, _, off, length = entries[rng.randrange(len(entries) - 1)]
    pos = off + rng.randrange(length)
    data[pos] ^= 1 << rng.randrange(8)
    seg.write_bytes(bytes(data))
    torn, corrupt = _check_recovered(data_dir, clocks, {kb.decode()})
    assert (torn, corrupt) == (0, 1), f"seed={seed}"


def test_damaged_hint_falls_back_to_scanning(
    dataset: tuple[Path, dict[str, DVVSet[Sibling]]], tmp_path: Path
) -> None:
    src, clocks = dataset
    data_dir = tmp_path / "d"
    _copy(src, data_dir)
    hint = next(data_dir.glob("*.hint"))
    raw = bytearray(hint.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    hint.write_bytes(bytes(raw))
    assert _check_recovered(data_dir, clocks, set()) == (0, 0)


def test_recovery_removes_unfinished_compaction_output(
    dataset: tuple[Path, dict[str, DVVSet[Sibling]]], tmp_path: Path
) -> None:
    src, clocks = dataset
    data_dir = tmp_path / "d"
    _copy(src, data_dir)
    (data_dir / ("00009999.seg" + ".tmp")).write_bytes(os.urandom(100))
    assert _check_recovered(data_dir, clocks, set()) == (0, 0)
    assert not list(data_dir.glob("*.tmp"))
