"""Anti-entropy hashes: equal contents give equal per-key hashes and partition digests whichever
engine holds them (a memory replica and a log replica compare), on the loop or in a thread."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gossipkv import _antientropy as ae
from gossipkv import _dvv
from gossipkv._dvv import Sibling
from gossipkv.storage import open_storage

Q = 8


def _clock(value: object, actor: str) -> Any:
    return _dvv.update(_dvv.new(None, Sibling(value, False, {})), None, actor)


async def _hashes(data_dir: Path | None, keys: int) -> dict[int, dict[str, bytes]]:
    async with open_storage(data_dir) as eng:
        for i in range(keys):
            await eng.put(f"key{i}", _clock({"i": i, "s": "x" * (i % 7)}, f"a{i % 3}"))
        anti = ae.AntiEntropy(SimpleNamespace(storage=eng), None)  # type: ignore[arg-type]
        return {p: await anti.key_hashes(p, Q) for p in range(Q)}


async def test_memory_and_log_replicas_hash_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = await _hashes(None, 300)
    log = await _hashes(tmp_path / "log", 300)
    assert memory == log
    assert sum(len(h) for h in memory.values()) == 300
    digests = {p: ae.partition_digest(h) for p, h in memory.items()}
    assert len(set(digests.values())) == Q  # every partition holds keys, each its own digest
    monkeypatch.setattr(ae, "THREAD_HASH_THRESHOLD", 0)  # hash in a worker thread instead
    assert await _hashes(tmp_path / "log2", 300) == memory


def test_partition_digest_depends_on_every_key_and_hash() -> None:
    base = {"a": b"1" * 16, "b": b"2" * 16}
    assert ae.partition_digest({}) == b""
    assert ae.partition_digest(base) == ae.partition_digest(dict(reversed(base.items())))
    assert ae.partition_digest(base) != ae.partition_digest({"a": b"1" * 16})
    assert ae.partition_digest(base) != ae.partition_digest({**base, "b": b"3" * 16})
