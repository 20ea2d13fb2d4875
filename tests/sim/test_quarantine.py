"""An unreadable record never takes a peer down (issue 10): at start and at run time it is
quarantined (moved aside, counted) and repaired from the other replicas while the peer serves.

Peer n3 runs on real log engines in a temporary directory (the other peers on the simulated
disks); records are damaged on disk between runs, as a bit flip or an older version would leave
them. Simulated time under an autojump MockClock, across seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from gossipkv import KVConfig, _codec
from gossipkv.storage import _keydir, _log_format, open_log_engine
from gossipkv.testing import SimCluster

from ._kvsim import kv_cluster, names, service

SEEDS = [7, 8, 9]
# The log engine works in threads; the clock_waits_for_threads fixture keeps simulated time still
# while they do, so the default replica timeout holds however slow the disk.
KV = KVConfig(
    handoff_interval=0.5,
    anti_entropy_interval=0,
    ownership_handoff_interval=0,
)
HINT_SEP = "\x1f"


@pytest.fixture(params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def seed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


def flip_record(data_dir: Path, loc: int) -> None:
    """Flip a byte inside a record's value: its checksum no longer matches."""
    path = data_dir / _log_format.seg_name(_keydir.seg_of(loc))
    with open(path, "r+b") as f:
        f.seek(_keydir.off_of(loc) + _keydir.len_of(loc) - 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def plant_record(data_dir: Path, key: str, value: bytes) -> None:
    """A record with a valid checksum and the newest sequence number that is not a clock."""
    segs = sorted(int(p.stem) for p in data_dir.glob("*.seg"))
    seg = (segs[-1] if segs else 0) + 1
    record = _log_format.encode_record(10**12 + seg, key.encode(), value)
    (data_dir / _log_format.seg_name(seg)).write_bytes(record)


def seen_by_all(c: SimCluster) -> bool:
    """Every running peer can reach every other (n3 is back in everyone's view)."""
    return all(service(n)._reachable() >= set(names(3)) for n in c.nodes.values())


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


# What an older version stored for a value nested 62 deep, and for a forged 2**64 dot.
TOO_DEEP = _codec.dumps_canonical([[["n1/1/0", 1, [[nested(62), False, {}]]]], []])
BIGNUM = _codec.dumps_canonical([[["n1/1/0", 2**64, []]], []])


async def test_unreadable_records_are_quarantined_and_repaired(
    seed: int,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
) -> None:
    data, hints = tmp_path / "data", tmp_path / "hints"
    keys = [f"k{i}" for i in range(6)]
    async with kv_cluster(seed, n=3, kv=KV) as c:
        c.kill("n3")
        async with open_log_engine(data) as d, open_log_engine(hints) as h:
            c.storage["n3"], c.hints["n3"] = d, h  # type: ignore[assignment]
            await c.restart("n3", seeds=["n1"], kv=KV)
            with trio.fail_after(60):
                await c.wait_until(lambda: c.nodes["n3"].status == "up" and seen_by_all(c))
                for key in keys:
                    await c.nodes["n1"].put(key, f"value of {key}", w=3)
            c.kill("n3")
            locs = {key: d._keydir[key] for key in keys}
        # Damage n3's records while it is down: a bit flip, an undecodable clock of each kind,
        # and a hint it can no longer read.
        flip_record(data, locs["k0"])
        plant_record(data, "k1", TOO_DEEP)
        plant_record(data, "k2", BIGNUM)
        plant_record(data, "k3", b"\xff\xff not cbor")
        plant_record(hints, f"n1{HINT_SEP}k4", TOO_DEEP)
        async with open_log_engine(data) as d, open_log_engine(hints) as h:
            c.storage["n3"], c.hints["n3"] = d, h  # type: ignore[assignment]
            node = await c.restart("n3", seeds=["n1"], kv=KV)  # starts: the hint is skipped
            with trio.fail_after(60):
                await c.wait_until(lambda: node.status == "up" and seen_by_all(c))
                # Serving throughout: reads through n3 are right at once (other replicas).
                for key in keys:
                    got = await node.get(key)
                    assert got.values == [f"value of {key}"], f"seed={seed}: {key} {got}"
                # ... and n3's own replica is restored by the repair rounds. (Those reads return
                # after R replies, so n3 may still be reading, and quarantining, its own.)
                await c.wait_until(
                    lambda: (
                        node.statistics().quarantined_records == 5
                        and node.statistics().quarantine_pending == 0
                    )
                )
                for key in keys:
                    got = await node.get(key, local=True)
                    assert got.values == [f"value of {key}"], f"seed={seed}: {key} {got}"
            stats = node.statistics()
            assert stats.quarantined_records == 5, f"seed={seed}: {stats.quarantined_records}"
            assert stats.quarantine_repairs == 5 and stats.quarantine_pending == 0, f"seed={seed}"
            quarantined = sorted(p.name for p in (data / "quarantine").iterdir())
            assert len(quarantined) == 4 and len(list((hints / "quarantine").iterdir())) == 1
            # The rewritten hint is readable again (and is delivered to n1 like any other).
            assert await h.get(f"n1{HINT_SEP}k4") is not None or service(node).hints_pending == 0
            c.kill("n3")
        # A clean restart: nothing left to quarantine, every key reads back locally.
        async with open_log_engine(data) as d, open_log_engine(hints) as h:
            c.storage["n3"], c.hints["n3"] = d, h  # type: ignore[assignment]
            node = await c.restart("n3", seeds=["n1"], kv=KV)
            with trio.fail_after(30):
                await c.wait_until(lambda: node.status == "up" and seen_by_all(c))
                for key in keys:
                    got = await node.get(key, local=True)
                    assert got.values == [f"value of {key}"], f"seed={seed}: {key} {got}"
            assert node.statistics().quarantined_records == 0, f"seed={seed}"
            c.kill("n3")
        assert set(c.nodes) == set(names(3)) - {"n3"}
