"""``gossipkv bench storage`` as a real process: JSON shape, one clear error line on bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIELDS = {
    "keys", "value_size", "fsync", "put_per_s", "get_per_s", "recovery_s", "rss_mb", "disk_mb",
    "disk_mb_after_compaction", "max_loop_lag_ms",
}  # fmt: skip


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gossipkv_cli", "bench", "storage", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.proc
def test_bench_storage_json(tmp_path: Path) -> None:
    data_dir = tmp_path / "bench"
    proc = _bench("--keys", "2000", "--value-size", "100", "--data-dir", str(data_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == FIELDS
    assert result["keys"] == 2000 and result["value_size"] == 100 and result["fsync"] == "batch"
    assert result["disk_mb_after_compaction"] < result["disk_mb"]


@pytest.mark.proc
def test_bench_storage_bad_input(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc = _bench("--keys", "10", "--data-dir", str(a_file), "--json")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: data dir {a_file} is a file, not a directory"]
    proc = _bench("--keys", "10", "--data-dir", str(tmp_path / "d"), "--fsync", "sometimes")
    assert proc.returncode == 2
    assert "--fsync must be one of always, batch, none" in proc.stderr
    big = str(2 * 1024 * 1024)
    proc = _bench("--keys", "3", "--value-size", big, "--data-dir", str(tmp_path / "v"))
    assert proc.returncode == 1
    assert "exceeds the 1048576-byte limit" in proc.stderr


@pytest.mark.proc
def test_bench_storage_ctrl_c_is_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "bench"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gossipkv_cli", "bench", "storage", "--keys", "5000000",
         "--data-dir", str(data_dir), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        # Writing has begun once a segment holds records (the lock file comes first).
        while not any(p.name != "LOCK" and p.stat().st_size > 0 for p in _files(data_dir)):
            assert time.monotonic() < deadline, "the bench never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines() == ["error: interrupted"]
    assert out == b""


def _files(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_file()] if path.is_dir() else []
