"""A peer on a log engine answers reads of records the page cache holds in the connection's
reader, with no task and no thread (issue 14): the same answer as the waiting path, and the
waiting path whenever the record would have to come from the disk.

Peer n3 runs on real log engines in a temporary directory, the others on the simulated disks.
Simulated time under an autojump MockClock, across seeds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from gossipkv import KVConfig
from gossipkv._kv_model import encode_wire_clock
from gossipkv._messages import ReplicaGet, ReplicaState
from gossipkv.storage import _reads, open_log_engine

from ._kvsim import kv_cluster, names, service

SEEDS = [11, 12]
# The log engine works in threads; the autouse clock_waits_for_threads keeps simulated time still.
KV = KVConfig(anti_entropy_interval=0, ownership_handoff_interval=0)


@pytest.fixture(params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def seed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


async def test_a_disk_replica_answers_cached_reads_in_the_reader(
    seed: int,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not _reads.nowait_reads_work(tmp_path):
        pytest.skip("no RWF_NOWAIT reads on this kernel or file system")
    keys = [f"k{i}" for i in range(5)]
    async with kv_cluster(seed, n=3, kv=KV) as c:
        c.kill("n3")
        async with open_log_engine(tmp_path / "data") as d, open_log_engine(tmp_path / "h") as h:
            c.storage["n3"], c.hints["n3"] = d, h  # type: ignore[assignment]
            node = await c.restart("n3", seeds=["n1"], kv=KV)
            with trio.fail_after(60):
                await c.wait_until(
                    lambda: node.status == "up" and service(node)._reachable() >= set(names(3))
                )
                for key in keys:
                    await c.nodes["n1"].put(key, f"value of {key}", w=3)
            replica = service(node).replica
            for key in [*keys, "never-written"]:
                answer = replica.serve_nowait(ReplicaGet(key))
                stored = await d.get(key)
                expected = None if stored is None else encode_wire_clock(stored)
                assert answer == ReplicaState(expected), f"seed={seed}: {key}"

            # A read n3 coordinates takes its own copy the same way: no task asks for it.
            calls = service(node)._calls
            asked: list[str] = []
            real_ask = calls.ask

            async def ask(fan: object, member: str, key: str) -> None:
                asked.append(member)
                await real_ask(fan, member, key)  # type: ignore[arg-type]

            monkeypatch.setattr(calls, "ask", ask)
            with trio.fail_after(60):
                for key in keys:
                    got = await node.get(key, r=3)
                    assert got.values == [f"value of {key}"], f"seed={seed}: {key} {got}"
            assert "n3" not in asked, f"seed={seed}: {asked}"
            # An operator sees the fast path at work (and would see 0 on NFS or FUSE).
            assert node.statistics().storage_page_cache_reads >= 2 * len(keys), f"seed={seed}"

            def not_cached(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
                raise BlockingIOError(errno.EAGAIN, "would block")

            # Only on disk: left to the waiting path (a task reads it in the reader thread).
            monkeypatch.setattr(os, "preadv", not_cached)
            assert replica.serve_nowait(ReplicaGet(keys[0])) is None
            # ... and reads through n3 are still right, its own copy now read by a task.
            with trio.fail_after(60):
                for key in keys:
                    got = await node.get(key, r=3)
                    assert got.values == [f"value of {key}"], f"seed={seed}: {key} {got}"
            assert "n3" in asked, f"seed={seed}: {asked}"
            monkeypatch.undo()
            c.kill("n3")
